import Durations
import ControlSocket
import Glibc
import RAMStream
import SharedMemory

/// The secondary's side of a pairing: keeps the colo-cache, a full mirror
/// of the PVM's RAM in a memfd of its own, and commits checkpoints from it
/// into the SVM's RAM.
///
/// Pages arrive on the page channels at any time (pre-copy rounds, pages
/// sent between checkpoints, the checkpoint itself) and go to the cache
/// only; each is recorded in `received`, the pages the primary sent since
/// the last commit, zero pages included. A commit waits until the next
/// checkpoint has arrived whole: its device state and end marker on the
/// control channel, and the end frame of every page channel, each count
/// matching. Only then is the SVM's RAM written: the union of `received`
/// and the pages the SVM dirtied (its own dirty log) is copied cache -> RAM
/// on several threads, and the commit is acknowledged to the primary.
///
/// `receive` waits for the same arrival without writing RAM, so that vmmd
/// can check the device state first; `refuse` then discards the checkpoint.
///
/// An incoming target (`ReplicationOptions.incoming`: a VM prepared for a
/// live migration, which never runs before the first commit) also gets
/// each page in its RAM as the page arrives, until that first commit: the
/// stop-and-copy then copies nothing it already has.
///
/// A checkpoint that does not arrive whole never reaches the SVM's RAM. The
/// cache may then hold some of its pages (even a torn one): they stay in
/// `received`, so any later commit copies them again, by which time the
/// primary has sent them whole. A protocol error or a timeout ends the
/// pairing; the SVM's RAM stays at the last commit.
public final class SecondaryReplica: @unchecked Sendable {
    public let pageCount: Int
    private let memory: MemoryMapping
    private let cache: MemoryMapping
    private let link: CheckpointLink
    private let guarded: GuardedLink
    private let options: ReplicationOptions
    private let receivers: [PageReceiver]
    private let state: Monitor<State>

    struct State {
        var sequence: UInt64 = 1
        var committed: UInt64 = 0
        var received: PageBitmap
        /// Cache pages ever written with data (the rest are still zero).
        var written: PageBitmap
        /// Incoming target before its first commit: pages go to RAM too.
        var mirroring: Bool
        var channelEnded: [Bool]
        var channelPages: [UInt64]
        var deviceState: [UInt8]?
        var end: ControlFrame.End?
        var failure: String?
        var closed = false
        var threadsAlive = 0
        var progress = Progress()
        var verifiedCommits: UInt64 = 0
        var verifyMismatches: UInt64 = 0
        var lastVerification = Verification.notChecked
    }

    public struct Progress: Sendable, Equatable {
        public var bytesReceived: UInt64 = 0
        public var pagesReceived: UInt64 = 0
        public var zeroPages: UInt64 = 0
    }

    /// What a commit did.
    public struct CommitReport: Sendable {
        public var sequence: UInt64
        public var deviceState: [UInt8]
        public var pagesCopied: UInt64
        public var waitNanoseconds: UInt64
        public var copyNanoseconds: UInt64
        public var verification: Verification
    }

    /// Starts the receivers on an established link. `memory` is the SVM's
    /// RAM; `cache` the colo-cache, the same size.
    public init(memory: MemoryMapping, cache: MemoryMapping, link: CheckpointLink, options: ReplicationOptions) {
        precondition(memory.size == cache.size && memory.writable && cache.writable)
        let pageCount = memory.size / PageFrame.pageSize
        self.pageCount = pageCount
        self.memory = memory
        self.cache = cache
        self.link = link
        self.guarded = GuardedLink(link)
        self.options = options
        self.receivers = link.pages.map { PageReceiver(socket: $0, memory: cache.base, pageCount: pageCount) }
        var initial = State(received: PageBitmap(pageCount: pageCount), written: PageBitmap(pageCount: pageCount),
                            mirroring: options.incoming,
                            channelEnded: Array(repeating: false, count: link.pages.count),
                            channelPages: Array(repeating: 0, count: link.pages.count))
        initial.threadsAlive = link.pages.count + 1
        self.state = Monitor(initial)
        for index in receivers.indices {
            spawnThread(name: "ckpt-recv-\(index)") { [self] in
                receive(channel: index)
                threadExited()
            }
        }
        spawnThread(name: "ckpt-control") { [self] in
            controlReader()
            threadExited()
        }
    }

    /// The next checkpoint once it has arrived whole, RAM untouched.
    public struct Arrival: Sendable {
        public var sequence: UInt64
        public var deviceState: [UInt8]
        public var waitNanoseconds: UInt64
    }

    /// Waits (at most the peer timeout) until the next checkpoint has
    /// arrived whole and returns its device state, leaving the SVM's RAM as
    /// it is: supervisord has vmmd check the state before `commit`.
    public func receive() throws(CheckpointError) -> Arrival {
        let start = monotonicNanoseconds()
        let (sequence, deviceState, _, _) = try awaitWhole(since: start, guestDirty: nil)
        return Arrival(sequence: sequence, deviceState: deviceState, waitNanoseconds: monotonicNanoseconds() - start)
    }

    /// Refuses the checkpoint that arrived (vmmd refused its device state):
    /// the SVM's RAM stays at the last commit, the primary is told `reason`
    /// and the pairing ends.
    public func refuse(reason: String) throws(CheckpointError) -> UInt64 {
        let sequence = state.withLock { $0.sequence }
        if let failure { throw .linkFailed(failure) }
        fail("checkpoint \(sequence) refused by the secondary: \(reason)")
        return sequence
    }

    /// Commits the next checkpoint into the SVM's RAM once it has arrived
    /// whole (waiting at most the peer timeout). `guestDirty`: the pages
    /// the SVM wrote since the last commit.
    public func commit(guestDirty: PageBitmap) throws(CheckpointError) -> CommitReport {
        let start = monotonicNanoseconds()
        guard guestDirty.pageCount == pageCount else { throw .invalidArgument("bitmap over another RAM size") }
        // An incoming target never ran: nothing of its own to overwrite.
        let incoming = state.withLock { $0.mirroring }
        let (sequence, deviceState, end, pages) = try awaitWhole(since: start, guestDirty: incoming ? nil : guestDirty)
        let copyStart = monotonicNanoseconds()
        copy(pages)
        let copyDone = monotonicNanoseconds()

        var verification = Verification.notChecked
        if !end.hashes.isEmpty {
            let local = MemoryDigest.hashes(of: memory.base, size: memory.size, threads: options.threads)
            verification = MemoryDigest.compare(local: local, peer: end.hashes)
        }
        state.withLock(notify: true) { s in
            s.received.removeAll()
            s.mirroring = false
            s.committed = sequence
            s.sequence = sequence + 1
            for index in s.channelEnded.indices {
                s.channelEnded[index] = false
                s.channelPages[index] = 0
            }
            s.deviceState = nil
            s.end = nil
            if verification.checked {
                s.verifiedCommits += 1
                if !verification.identical { s.verifyMismatches += 1 }
                s.lastVerification = verification
            }
        }
        do {
            try guarded.sendControl(.committed(sequence: sequence, verification))
        } catch {
            // The SVM's RAM is committed; the primary, without the
            // acknowledgement, treats the checkpoint as failed. Which side
            // carries on is supervisord's decision (heartbeat, witness).
            fail("\(CheckpointLink.controlChannel): \(error)")
        }
        return CommitReport(sequence: sequence, deviceState: deviceState, pagesCopied: UInt64(pages.count),
                            waitNanoseconds: copyStart - start, copyNanoseconds: copyDone - copyStart,
                            verification: verification)
    }

    /// The next checkpoint once it has arrived whole, with the pages to
    /// copy (those received, plus `guestDirty`); a failure ends the pairing.
    private func awaitWhole(since start: UInt64, guestDirty: PageBitmap?)
        throws(CheckpointError) -> (UInt64, [UInt8], ControlFrame.End, PageBitmap) {
        enum Arrival { case whole(UInt64, [UInt8], ControlFrame.End, PageBitmap), failed, incomplete(String) }
        let arrival = state.wait(deadline: start + UInt64(clamping: max(0, options.peerTimeout.nanoseconds))) { (s: inout State) -> Arrival? in
            if s.failure != nil { return .failed }
            guard let end = s.end, let deviceState = s.deviceState, s.channelEnded.allSatisfy({ $0 }) else { return nil }
            let carried = s.channelPages.reduce(0, +)
            guard carried == end.totalPages else {
                return .incomplete("checkpoint \(s.sequence): the end marker counts \(end.totalPages) pages, "
                                   + "the page channels carried \(carried)")
            }
            var pages = s.received
            if let guestDirty { pages.formUnion(guestDirty) }
            return .whole(s.sequence, deviceState, end, pages)
        }
        switch arrival {
        case let .whole(sequence, deviceState, end, union):
            return (sequence, deviceState, end, union)
        case .failed:
            throw .linkFailed(failureDescription())
        case let .incomplete(problem):
            fail(problem)
            throw .linkFailed(failureDescription())
        case nil:
            let next = state.withLock { $0.sequence }
            fail("checkpoint \(next) did not arrive whole within \(options.peerTimeout)")
            throw .linkFailed(failureDescription())
        }
    }

    public var committedSequence: UInt64 { state.withLock { $0.committed } }
    public var failure: String? { state.withLock { $0.failure } }
    public var progress: Progress { state.withLock { $0.progress } }

    public var verificationSummary: (commits: UInt64, mismatches: UInt64, last: Verification) {
        state.withLock { ($0.verifiedCommits, $0.verifyMismatches, $0.lastVerification) }
    }

    /// The colo-cache's bytes, for tests and verify tools.
    public var cacheBase: UnsafeRawPointer { UnsafeRawPointer(cache.base) }

    public func close() {
        state.withLock(notify: true) { s in
            s.closed = true
            if s.failure == nil { s.failure = "detached" }
        }
        guarded.abort(telling: "detached")
    }

    // MARK: - Copy

    /// Copies `pages` cache -> SVM RAM, split into shares of equal page
    /// counts over the copy threads, each run of consecutive pages one memcpy.
    private func copy(_ pages: PageBitmap) {
        let total = pages.count
        guard total > 0 else { return }
        let threads = min(options.threads, max(1, total / 64))
        var bounds = [0]
        var counted = 0
        for (index, word) in pages.words.enumerated() {
            counted += word.nonzeroBitCount
            if bounds.count < threads && counted >= total * bounds.count / threads {
                bounds.append(index + 1)
            }
        }
        while bounds.count <= threads { bounds.append(pages.words.count) }
        bounds[threads] = pages.words.count
        let source = UnsafeRawPointer(cache.base)
        let destination = memory.base
        let shares = bounds
        let job = CopyJob(source: source, destination: destination, pages: pages, bounds: shares)
        runInParallel(threads: threads) { index in
            job.pages.forEachRun(inWords: job.bounds[index]..<job.bounds[index + 1]) { first, count in
                let offset = first * PageFrame.pageSize
                memcpy(job.destination + offset, job.source + offset, count * PageFrame.pageSize)
            }
        }
    }

    /// Incoming target before its first commit: the pages just received go
    /// cache -> RAM at once (their data, or zeros where RAM held data).
    /// RAM of a VM that never ran is written by nothing else, so what was
    /// never written there is zero, like the cache.
    private func copyIntoMemory(_ pages: [Int], clearing zeroPages: [Int]) {
        for page in pages {
            let offset = page * PageFrame.pageSize
            memcpy(memory.base + offset, cache.base + offset, PageFrame.pageSize)
        }
        for page in zeroPages {
            memset(memory.base + page * PageFrame.pageSize, 0, PageFrame.pageSize)
        }
    }

    private struct CopyJob: @unchecked Sendable {
        let source: UnsafeRawPointer
        let destination: UnsafeMutableRawPointer
        let pages: PageBitmap
        let bounds: [Int]
    }

    // MARK: - Threads

    private func receive(channel index: Int) {
        let receiver = receivers[index]
        let name = CheckpointLink.pageChannel(index)
        while true {
            do {
                let header = try receiver.receiveHeader()
                try state.withLock { (s) throws(RAMStreamError) in
                    guard header.sequence == s.sequence else {
                        throw .wrongSequence(expected: s.sequence, received: header.sequence)
                    }
                    guard !s.channelEnded[index] else {
                        throw .badFrame("a frame after the channel's end of checkpoint \(s.sequence), before its commit")
                    }
                }
                switch header.kind {
                case .pages:
                    var mirror: (pages: [Int], zeroPages: [Int], cleared: [Int])?
                    let received = try receiver.receivePages(count: header.count) { pages, zeroPages in
                        state.withLock { s in
                            var cleared: [Int] = []
                            for page in zeroPages {
                                s.received.insert(page)
                                if s.written.contains(page) { cleared.append(page) }
                            }
                            for page in pages {
                                s.received.insert(page)
                                s.written.insert(page)
                            }
                            if s.mirroring { mirror = (pages, zeroPages, cleared) }
                            return cleared
                        }
                    }
                    if let mirror {
                        copyIntoMemory(mirror.pages, clearing: mirror.cleared)
                        state.withLock { s in
                            guard s.mirroring else { return }
                            for page in mirror.pages { s.received.remove(page) }
                            for page in mirror.zeroPages { s.received.remove(page) }
                        }
                    }
                    state.withLock { s in
                        s.channelPages[index] += UInt64(received.pages)
                        s.progress.pagesReceived += UInt64(received.pages)
                        s.progress.zeroPages += UInt64(received.zeroPages)
                        s.progress.bytesReceived += UInt64(received.bytes)
                    }
                case .channelEnd:
                    try state.withLock(notify: true) { (s) throws(RAMStreamError) in
                        guard header.pages == s.channelPages[index] else {
                            throw .badFrame("channel end counts \(header.pages) pages, the channel carried \(s.channelPages[index])")
                        }
                        s.channelEnded[index] = true
                    }
                }
            } catch {
                fail("\(name): \(error)")
                return
            }
        }
    }

    private func controlReader() {
        while true {
            do {
                let frame = try link.control.receiveControlFrame(idle: true)
                try state.withLock(notify: true) { (s) throws(RAMStreamError) in
                    switch frame {
                    case let .deviceState(sequence, bytes):
                        guard sequence == s.sequence else { throw .wrongSequence(expected: s.sequence, received: sequence) }
                        guard s.deviceState == nil else { throw .badFrame("a second device state for checkpoint \(sequence)") }
                        s.deviceState = bytes
                    case let .end(sequence, end):
                        guard sequence == s.sequence else { throw .wrongSequence(expected: s.sequence, received: sequence) }
                        guard s.end == nil, s.deviceState != nil else {
                            throw .badFrame("end marker of checkpoint \(sequence) out of order")
                        }
                        let chunks = MemoryDigest.chunkCount(size: memory.size)
                        guard end.hashes.isEmpty
                              || (end.hashes.count == chunks && end.hashChunkBytes == UInt32(MemoryDigest.chunkBytes)) else {
                            throw .badFrame("\(end.hashes.count) verify hashes of \(end.hashChunkBytes) bytes; RAM has \(chunks) chunks of \(MemoryDigest.chunkBytes)")
                        }
                        s.end = end
                    case let .error(message):
                        throw .peerError(message)
                    case .hello, .committed:
                        throw .badFrame("unexpected frame from the primary")
                    }
                }
            } catch {
                fail("\(CheckpointLink.controlChannel): \(error)")
                return
            }
        }
    }

    private func fail(_ reason: String) {
        let first = state.withLock(notify: true) { s -> Bool in
            guard s.failure == nil else { return false }
            s.failure = reason
            return true
        }
        if first { guarded.abort(telling: reason) }
    }

    private func failureDescription() -> String {
        state.withLock { $0.failure ?? "unknown failure" }
    }

    private func threadExited() {
        let last = state.withLock(notify: true) { s -> Bool in
            s.threadsAlive -= 1
            return s.threadsAlive == 0
        }
        if last { guarded.close() }
    }
}
