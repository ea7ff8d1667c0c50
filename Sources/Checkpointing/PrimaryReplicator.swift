import Durations
import ControlSocket
import Glibc
import RAMStream
import SharedMemory

/// The primary's side of a pairing: sends guest RAM pages to the secondary
/// over all page channels at once, for pre-copy rounds while the guest runs
/// and for checkpoints while it is paused.
///
///     caller (supervisord)        PrimaryReplicator               secondary
///     queueRound(bitmap) -------> pending |= bitmap; workers drain it
///                                 page-i: pages(seq N) ... ------> colo-cache
///     takeCheckpoint(bitmap, ds)  stop the round, pending |= bitmap
///                                 control: device state(N) ------>
///                                 page-i: pages(N) ..., end(N) -->
///                                 control: end(N, total) -------->
///                                 <------------------------------- committed(N)
///     <-------------------------- report
///
/// One worker thread per page channel claims a few hundred pages at a time
/// from the shared set of pages to send, and writes them from the RAM
/// mapping straight into its socket. A page always travels on the same
/// channel (64-page word w of the bitmap on channel w % N): a page sent in a
/// round and sent again, changed, in the checkpoint must reach the cache in
/// that order, which only one TCP stream guarantees. (With any channel
/// taking any page, the older copy, still in one channel's socket buffers,
/// could land after the newer one from another: measured, it did.) Pages queued in rounds and not yet sent
/// when a checkpoint starts are simply part of the checkpoint. Any channel
/// error fails the whole pairing.
public final class PrimaryReplicator: @unchecked Sendable {
    public let pageCount: Int
    private let memory: MemoryMapping
    private let link: CheckpointLink
    private let options: ReplicationOptions
    private let senders: [PageSender]
    private let guarded: GuardedLink
    private let state: Monitor<State>
    /// Pages a worker claims at a time: 1 MiB of data per batch.
    static let batchPages = 256

    enum Pass: Equatable {
        case idle
        case round(sequence: UInt64)
        case checkpoint(sequence: UInt64)

        var sequence: UInt64? {
            switch self {
            case .idle: return nil
            case let .round(sequence), let .checkpoint(sequence): return sequence
            }
        }
    }

    struct State {
        var pending: PageBitmap
        /// Per channel: the next bitmap word it looks at.
        var cursors: [Int]
        var pass = Pass.idle
        var generation = 0
        var busyWorkers = 0
        var stopRequested = false
        var checkpointRunning = false
        var failure: String?
        var closed = false
        var threadsAlive = 0
        var committed: UInt64 = 0
        var acknowledged: (sequence: UInt64, verification: Verification)?
        /// Pages sent with the current (next) sequence, rounds included.
        var sequencePages: UInt64 = 0
        var progress = Progress()
        var passStart: UInt64 = 0
        var passBytes: UInt64 = 0
        /// Pages workers have claimed and not finished sending.
        var inFlight = 0
        var checkpointCounters = PageSender.Sent()
    }

    /// The transfer as a progress bar shows it.
    public struct Progress: Sendable, Equatable {
        public var bytesSent: UInt64 = 0
        public var pagesSent: UInt64 = 0
        public var zeroPages: UInt64 = 0
        public var dirtyPagesLeft: UInt64 = 0
        public var bytesPerSecond: UInt64 = 0
        public var rounds: UInt32 = 0
        public var lastRoundPages: UInt64 = 0
        public var stopAndCopyAdvised = false
    }

    /// What a checkpoint cost.
    public struct CheckpointReport: Sendable, Equatable {
        public var sequence: UInt64
        public var pagesSent: UInt64
        public var zeroPages: UInt64
        public var bytesSent: UInt64
        public var sendNanoseconds: UInt64
        public var totalNanoseconds: UInt64
        public var verification: Verification
    }

    /// Starts the workers on an established link. `memory` is the PVM's RAM.
    public init(memory: MemoryMapping, link: CheckpointLink, options: ReplicationOptions) {
        self.memory = memory
        self.pageCount = memory.size / PageFrame.pageSize
        self.link = link
        self.options = options
        self.guarded = GuardedLink(link)
        self.senders = link.pages.map { PageSender(socket: $0, memory: memory.base, pageCount: memory.size / PageFrame.pageSize) }
        var initial = State(pending: PageBitmap(pageCount: memory.size / PageFrame.pageSize),
                            cursors: Array(repeating: 0, count: link.pages.count))
        initial.threadsAlive = link.pages.count + 1
        self.state = Monitor(initial)
        for index in senders.indices {
            spawnThread(name: "ckpt-send-\(index)") { [self] in
                worker(index)
                threadExited()
            }
        }
        spawnThread(name: "ckpt-acks") { [self] in
            acknowledgementReader()
            threadExited()
        }
    }

    /// Queues a pre-copy round: the pages of `bitmap` (nil: every page) are
    /// sent in the background while the guest runs. Returns the pages
    /// queued and the round's number.
    public func queueRound(_ bitmap: PageBitmap?) throws(CheckpointError) -> (pages: Int, round: UInt32) {
        let round = bitmap ?? PageBitmap.full(pageCount: pageCount)
        guard round.pageCount == pageCount else { throw .invalidArgument("bitmap over another RAM size") }
        let queued = round.count
        return try state.withLock(notify: true) { (s) throws(CheckpointError) in
            if let failure = s.failure { throw .linkFailed(failure) }
            guard !s.checkpointRunning else { throw .wrongState("a checkpoint is in progress") }
            s.pending.formUnion(round)
            s.progress.rounds += 1
            s.progress.lastRoundPages = UInt64(queued)
            if s.pass == .idle && !s.pending.isEmpty {
                startPass(&s, .round(sequence: s.committed + 1))
            }
            return (queued, s.progress.rounds)
        }
    }

    /// Takes a checkpoint of the paused PVM: sends the pages still queued
    /// and those of `bitmap`, the device state and the end marker, and
    /// waits (at most the peer timeout past the last page) for the
    /// secondary to commit it.
    public func takeCheckpoint(_ bitmap: PageBitmap, deviceState: [UInt8]) throws(CheckpointError) -> CheckpointReport {
        let start = monotonicNanoseconds()
        guard bitmap.pageCount == pageCount else { throw .invalidArgument("bitmap over another RAM size") }
        guard deviceState.count <= ControlFrame.maxDeviceStateBytes else {
            throw .invalidArgument("device state of \(deviceState.count) bytes (at most \(ControlFrame.maxDeviceStateBytes))")
        }
        try state.withLock(notify: true) { (s) throws(CheckpointError) in
            if let failure = s.failure { throw .linkFailed(failure) }
            guard !s.checkpointRunning else { throw .wrongState("a checkpoint is already in progress") }
            s.checkpointRunning = true
            s.stopRequested = true
        }
        // The round in flight stops after its current batches; what it has
        // not sent stays queued and goes with the checkpoint.
        let sequence = state.wait(deadline: nil) { (s: inout State) -> UInt64? in
            guard s.busyWorkers == 0 || s.failure != nil else { return nil }
            s.stopRequested = false
            guard s.failure == nil else { return 0 }
            s.pending.formUnion(bitmap)
            s.checkpointCounters = PageSender.Sent()
            startPass(&s, .checkpoint(sequence: s.committed + 1))
            return s.committed + 1
        }
        defer { state.withLock(notify: true) { $0.checkpointRunning = false } }
        guard let sequence, sequence > 0 else { throw .linkFailed(failureDescription()) }

        do {
            try guarded.sendControl(.deviceState(sequence: sequence, bytes: deviceState))
        } catch {
            fail("\(CheckpointLink.controlChannel): \(error)")
        }
        let counted = state.wait(deadline: nil) { (s: inout State) -> PageSender.Sent?? in
            guard s.busyWorkers == 0 || s.failure != nil else { return nil }
            return .some(s.failure == nil ? s.checkpointCounters : nil)
        }
        guard let counted, let sent = counted else { throw .linkFailed(failureDescription()) }
        let sendDone = monotonicNanoseconds()

        let hashes = options.verify
            ? MemoryDigest.hashes(of: memory.base, size: memory.size, threads: options.threads) : []
        let total = state.withLock { $0.sequencePages }
        do {
            try guarded.sendControl(.end(sequence: sequence, ControlFrame.End(
                totalPages: total, hashChunkBytes: options.verify ? UInt32(MemoryDigest.chunkBytes) : 0, hashes: hashes)))
        } catch {
            fail("\(CheckpointLink.controlChannel): \(error)")
        }
        let deadline = monotonicNanoseconds() + UInt64(clamping: max(0, options.peerTimeout.nanoseconds))
        let verification = state.wait(deadline: deadline) { (s: inout State) -> Verification?? in
            if s.failure != nil { return .some(nil) }
            guard let acknowledged = s.acknowledged, acknowledged.sequence == sequence else { return nil }
            s.committed = sequence
            s.sequencePages = 0
            return .some(acknowledged.verification)
        }
        guard let verification else {
            fail("the secondary did not acknowledge checkpoint \(sequence) within \(options.peerTimeout)")
            throw .linkFailed(failureDescription())
        }
        guard let verification else { throw .linkFailed(failureDescription()) }
        return CheckpointReport(sequence: sequence, pagesSent: UInt64(sent.pages), zeroPages: UInt64(sent.zeroPages),
                                bytesSent: UInt64(sent.bytes), sendNanoseconds: sendDone - start,
                                totalNanoseconds: monotonicNanoseconds() - start, verification: verification)
    }

    public var committedSequence: UInt64 { state.withLock { $0.committed } }

    /// nil while the link works; why it failed otherwise.
    public var failure: String? { state.withLock { $0.failure } }

    public var progress: Progress {
        state.withLock { s in
            var progress = s.progress
            progress.dirtyPagesLeft = UInt64(s.pending.count + s.inFlight)
            let roundBytes = Double(progress.lastRoundPages) * Double(PageFrame.pageSize)
            let downtime = Double(options.maxDowntime.nanoseconds) / 1e9
            let converged = progress.rounds > 1 && progress.dirtyPagesLeft == 0 && progress.bytesPerSecond > 0
                && roundBytes / Double(progress.bytesPerSecond) <= downtime
            progress.stopAndCopyAdvised = converged || Int(progress.rounds) >= options.maxRounds
            return progress
        }
    }

    /// Ends the pairing: wakes every thread; the channels close once the
    /// last of them has gone.
    public func close() {
        state.withLock(notify: true) { s in
            s.closed = true
            if s.failure == nil { s.failure = "detached" }
        }
        guarded.abort(telling: "detached")
    }

    // MARK: - Threads

    /// The current pass's send rate, kept up to date batch by batch so a
    /// progress bar shows it during a long first round (once 1 MiB went).
    private func updateRate(_ s: inout State) {
        let elapsed = monotonicNanoseconds() - s.passStart
        if s.passBytes >= 1 << 20 && elapsed > 0 {
            s.progress.bytesPerSecond = UInt64(Double(s.passBytes) * 1e9 / Double(elapsed))
        }
    }

    private func startPass(_ s: inout State, _ pass: Pass) {
        s.pass = pass
        s.cursors = Array(s.cursors.indices)
        s.generation += 1
        s.busyWorkers = senders.count
        s.passStart = monotonicNanoseconds()
        s.passBytes = 0
    }

    private func worker(_ index: Int) {
        let sender = senders[index]
        var seenGeneration = 0
        var sequencePages: UInt64 = 0
        while true {
            let job = state.wait(deadline: nil) { (s: inout State) -> (generation: Int, pass: Pass)? in
                if s.closed || s.failure != nil { return (0, .idle) }
                return s.generation != seenGeneration ? (s.generation, s.pass) : nil
            }
            guard let job, job.generation != 0, let sequence = job.pass.sequence else { return }
            seenGeneration = job.generation
            var pages: [Int] = []
            pages.reserveCapacity(Self.batchPages + 64)
            var failed = false
            while true {
                pages.removeAll(keepingCapacity: true)
                let claimed = state.withLock { s -> Bool in
                    guard !s.stopRequested, s.failure == nil else { return false }
                    s.pending.take(from: &s.cursors[index], stride: senders.count, limit: Self.batchPages,
                                   into: &pages)
                    s.inFlight += pages.count
                    return !pages.isEmpty
                }
                guard claimed else { break }
                do {
                    let sent = try sender.sendBatch(pages, sequence: sequence)
                    sequencePages += UInt64(sent.pages)
                    state.withLock { s in
                        s.inFlight -= pages.count
                        s.sequencePages += UInt64(sent.pages)
                        s.passBytes += UInt64(sent.bytes)
                        updateRate(&s)
                        s.progress.bytesSent += UInt64(sent.bytes)
                        s.progress.pagesSent += UInt64(sent.pages)
                        s.progress.zeroPages += UInt64(sent.zeroPages)
                        if case .checkpoint = job.pass {
                            s.checkpointCounters.pages += sent.pages
                            s.checkpointCounters.zeroPages += sent.zeroPages
                            s.checkpointCounters.bytes += sent.bytes
                        }
                    }
                } catch {
                    state.withLock { $0.inFlight -= pages.count }
                    fail("\(CheckpointLink.pageChannel(index)): \(error)")
                    failed = true
                    break
                }
            }
            if case .checkpoint = job.pass, !failed {
                do {
                    try sender.sendChannelEnd(sequence: sequence, pages: sequencePages)
                    sequencePages = 0
                } catch {
                    fail("\(CheckpointLink.pageChannel(index)): \(error)")
                }
            }
            state.withLock(notify: true) { s in
                s.busyWorkers -= 1
                guard s.busyWorkers == 0 else { return }
                updateRate(&s)
                // Pages queued behind the cursor while the round ran.
                if case .round = s.pass, !s.stopRequested, s.failure == nil, !s.pending.isEmpty {
                    startPass(&s, s.pass)
                } else {
                    s.pass = .idle
                }
            }
        }
    }

    private func acknowledgementReader() {
        while true {
            let frame: ControlFrame
            do {
                frame = try link.control.receiveControlFrame(idle: true)
            } catch {
                fail("\(CheckpointLink.controlChannel): \(error)")
                return
            }
            switch frame {
            case let .committed(sequence, verification):
                let expected = state.withLock(notify: true) { s -> UInt64? in
                    guard s.checkpointRunning, sequence == s.committed + 1 else { return s.committed + 1 }
                    s.acknowledged = (sequence, verification)
                    return nil
                }
                if let expected {
                    fail("\(CheckpointLink.controlChannel): \(RAMStreamError.wrongSequence(expected: expected, received: sequence))")
                    return
                }
            case let .error(message):
                fail("\(CheckpointLink.controlChannel): \(RAMStreamError.peerError(message))")
                return
            default:
                fail("\(CheckpointLink.controlChannel): \(RAMStreamError.badFrame("unexpected frame from the secondary"))")
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
