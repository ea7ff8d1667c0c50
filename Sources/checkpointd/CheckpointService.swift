import Durations
import Checkpointing
import ColoProtocol
import ControlSocket
import DaemonRuntime
import Glibc
import Logging
import PeerAuthentication
import RAMStream
import SharedMemory
import Synchronization
import SystemPackage

/// checkpointd's control requests (Proto/colo/control/checkpointd.proto)
/// mapped onto the Checkpointing library: one pairing at a time, as primary
/// or secondary.
///
/// Attach, take and commit block their connection's thread while they wait
/// on the peer, never longer than the peer timeout: a checkpoint's pause is
/// the figure that matters most, and answering only once it is done spares
/// the caller a polling round trip. Rounds of pages return at once and are
/// observed through the status request.
final class CheckpointService: DaemonService {
    private let key: PeerKey?
    private let logger: Logger
    private let pairing = Mutex(Pairing.detached)

    enum Pairing {
        case detached
        case attaching
        case primary(PrimaryReplicator, ReplicationOptions)
        case secondary(SecondaryReplica, ReplicationOptions)
    }

    init(key: PeerKey?, logger: Logger) {
        self.key = key
        self.logger = logger
    }

    var state: String {
        pairing.withLock { pairing in
            switch pairing {
            case .detached: return "detached"
            case .attaching: return "attaching"
            // A lost link is the peer's end (a failover), not this daemon's:
            // it waits, healthy, for the next attach.
            case let .primary(replicator, _): return replicator.failure == nil ? "primary" : "primary, link lost"
            case let .secondary(replica, _): return replica.failure == nil ? "secondary" : "secondary, link lost"
            }
        }
    }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        var fds = HandedFds(context.fds)
        defer { fds.closeUnclaimed() }
        switch body {
        case let .checkpointAttach(request): return attach(request, fds: &fds)
        case let .checkpointSendPages(request): return sendPages(request, fds: &fds)
        case let .checkpointTake(request): return take(request, fds: &fds)
        case let .checkpointCommit(request): return commit(request, fds: &fds)
        case .checkpointReceive: return receive()
        case let .checkpointRefuse(request): return refuse(request)
        case .checkpointStatus: return ControlReply(.checkpointStatus(status()))
        default: return nil
        }
    }

    // MARK: - Requests

    private func attach(_ request: ColoCheckpointAttach, fds: inout HandedFds) -> ControlReply {
        guard let key else {
            return .error(.failedPrecondition, "checkpointd was started without --peer-key: it cannot authenticate a peer")
        }
        let primary: Bool
        switch request.role {
        case .primary: primary = true
        case .secondary: primary = false
        default: return .error(.invalidArgument, "role must be primary or secondary")
        }
        guard request.pageChannels.count >= 1 && request.pageChannels.count <= CheckpointLink.maxPageChannels else {
            return .error(.invalidArgument, "\(request.pageChannels.count) page channels (1...\(CheckpointLink.maxPageChannels) allowed)")
        }
        guard let memoryFD = fds.claim(request.guestMemory), let controlFD = fds.claim(request.controlChannel) else {
            return .error(.missingFd, "guest_memory and control_channel must name distinct fds of the request")
        }
        var pageFDs: [FileDescriptor] = []
        for ref in request.pageChannels {
            guard let fd = fds.claim(ref) else {
                try? memoryFD.close()
                try? controlFD.close()
                pageFDs.forEach { try? $0.close() }
                return .error(.missingFd, "page channel fd \(ref.index) is missing or named twice")
            }
            pageFDs.append(fd)
        }
        let options = ReplicationOptions(
            verify: request.verify,
            peerTimeout: .milliseconds(request.peerTimeoutMs == 0 ? 5000 : Int64(request.peerTimeoutMs)),
            threads: request.copyThreads == 0 ? availableCPUs() : Int(request.copyThreads),
            maxDowntime: .milliseconds(request.maxDowntimeMs == 0 ? 100 : Int64(request.maxDowntimeMs)),
            maxRounds: request.maxRounds == 0 ? 30 : Int(request.maxRounds),
            incoming: request.incoming)

        let previous = pairing.withLock { pairing -> Pairing? in
            if case .attaching = pairing { return nil }
            defer { pairing = .attaching }
            return pairing
        }
        guard let previous else {
            try? memoryFD.close()
            try? controlFD.close()
            pageFDs.forEach { try? $0.close() }
            return .error(.failedPrecondition, "another attach is in progress")
        }
        switch previous {
        case let .primary(replicator, _): replicator.close()
        case let .secondary(replica, _): replica.close()
        case .detached, .attaching: break
        }

        let result = establish(primary: primary, memoryFD: memoryFD, controlFD: controlFD, pageFDs: pageFDs,
                               key: key, options: options)
        switch result {
        case let .success(established):
            pairing.withLock { $0 = established }
            let bytes: Int
            switch established {
            case let .primary(replicator, _): bytes = replicator.pageCount * PageFrame.pageSize
            case let .secondary(replica, _): bytes = replica.pageCount * PageFrame.pageSize
            default: bytes = 0
            }
            logger.info("paired with the peer checkpointd", metadata: [
                "event": "paired", "role": "\(primary ? "primary" : "secondary")",
                "page_channels": "\(pageFDs.count)", "guest_memory_bytes": "\(bytes)", "verify": "\(options.verify)",
            ])
            var reply = ColoCheckpointAttached()
            reply.guestMemoryBytes = UInt64(bytes)
            reply.pageChannels = UInt32(pageFDs.count)
            return ControlReply(.checkpointAttached(reply))
        case let .failure(error):
            pairing.withLock { $0 = .detached }
            logger.warning("pairing refused: \(error)", metadata: ["event": "pairing_refused", "error": "\(error)"])
            return .error(code(for: error), "\(error)")
        }
    }

    private func establish(primary: Bool, memoryFD: FileDescriptor, controlFD: FileDescriptor,
                           pageFDs: [FileDescriptor], key: PeerKey, options: ReplicationOptions)
        -> Result<Pairing, CheckpointError> {
        let memory: MemoryMapping
        do {
            defer { try? memoryFD.close() }
            memory = try MemoryMapping(memfd: Memfd(adopting: memoryFD), writable: !primary)
        } catch {
            try? controlFD.close()
            pageFDs.forEach { try? $0.close() }
            return .failure(.invalidArgument("guest memory: \(error)"))
        }
        guard memory.size % PageFrame.pageSize == 0 else {
            try? controlFD.close()
            pageFDs.forEach { try? $0.close() }
            return .failure(.invalidArgument("guest memory of \(memory.size) bytes is not a whole number of 4 KiB pages"))
        }
        var cache: MemoryMapping?
        if !primary {
            do {
                let memfd = try Memfd.create(name: "colo-cache", size: memory.size, sealedSize: true)
                defer { try? memfd.fd.close() }
                cache = try MemoryMapping(memfd: memfd, writable: true)
                // The initial sync writes every page of the cache (and of
                // an incoming target's RAM): fault them in now, at pairing,
                // rather than one by one during the migration. Only an
                // optimisation: a kernel without it (before 5.14) pays the
                // faults later.
                try? cache?.populate()
                if options.incoming { try? memory.populate() }
            } catch {
                try? controlFD.close()
                pageFDs.forEach { try? $0.close() }
                return .failure(.invalidArgument("colo-cache of \(memory.size) bytes: \(error)"))
            }
        }
        let link: CheckpointLink
        do {
            link = try CheckpointLink.establish(controlFD: controlFD.rawValue, pageFDs: pageFDs.map(\.rawValue),
                                          primary: primary, key: key, memoryBytes: memory.size,
                                          timeout: options.peerTimeout)
        } catch {
            return .failure(error)
        }
        if let cache {
            return .success(.secondary(SecondaryReplica(memory: memory, cache: cache, link: link, options: options), options))
        }
        return .success(.primary(PrimaryReplicator(memory: memory, link: link, options: options), options))
    }

    private func sendPages(_ request: ColoCheckpointSendPages, fds: inout HandedFds) -> ControlReply {
        guard case let .primary(replicator, _) = pairing.withLock({ $0 }) else {
            return .error(.failedPrecondition, "not paired as primary")
        }
        var bitmap: PageBitmap?
        if !request.allPages {
            switch readBitmap(request.dirtyBitmap, hasRef: request.hasDirtyBitmap, pageCount: replicator.pageCount, fds: &fds) {
            case let .success(read): bitmap = read
            case let .failure(refusal): return refusal.reply
            }
        }
        do {
            let (pages, round) = try replicator.queueRound(bitmap)
            var reply = ColoCheckpointSendPagesAccepted()
            reply.pagesQueued = UInt64(pages)
            reply.round = round
            return ControlReply(.checkpointSendPages(reply))
        } catch {
            return refuse(error)
        }
    }

    private func take(_ request: ColoCheckpointTake, fds: inout HandedFds) -> ControlReply {
        guard case let .primary(replicator, _) = pairing.withLock({ $0 }) else {
            return .error(.failedPrecondition, "not paired as primary")
        }
        let bitmap: PageBitmap
        switch readBitmap(request.dirtyBitmap, hasRef: request.hasDirtyBitmap, pageCount: replicator.pageCount, fds: &fds) {
        case let .success(read): bitmap = read
        case let .failure(refusal): return refusal.reply
        }
        var deviceState: [UInt8] = []
        if request.hasDeviceState {
            guard let fd = fds.claim(request.deviceState) else { return .error(.missingFd, "device_state names no fd") }
            defer { try? fd.close() }
            do {
                deviceState = try Memfd(adopting: fd).readAll(limit: ControlFrame.maxDeviceStateBytes)
            } catch {
                return .error(.invalidArgument, "device state: \(error)")
            }
        }
        do {
            let report = try replicator.takeCheckpoint(bitmap, deviceState: deviceState)
            logger.info("checkpoint \(report.sequence) committed by the secondary", metadata: [
                "event": "checkpoint_taken", "checkpoint": "\(report.sequence)",
                "pause_us": "\(report.totalNanoseconds / 1000)", "pages": "\(report.pagesSent)",
                "zero_pages": "\(report.zeroPages)", "bytes": "\(report.bytesSent)",
            ])
            var reply = ColoCheckpointTaken()
            reply.sequence = report.sequence
            reply.pagesSent = report.pagesSent
            reply.zeroPages = report.zeroPages
            reply.bytesSent = report.bytesSent
            reply.sendUs = report.sendNanoseconds / 1000
            reply.totalUs = report.totalNanoseconds / 1000
            reply.verification = message(report.verification)
            return ControlReply(.checkpointTaken(reply))
        } catch {
            return refuse(error)
        }
    }

    private func commit(_ request: ColoCheckpointCommit, fds: inout HandedFds) -> ControlReply {
        guard case let .secondary(replica, _) = pairing.withLock({ $0 }) else {
            return .error(.failedPrecondition, "not paired as secondary")
        }
        let bitmap: PageBitmap
        switch readBitmap(request.guestDirtyBitmap, hasRef: request.hasGuestDirtyBitmap, pageCount: replica.pageCount,
                          fds: &fds) {
        case let .success(read): bitmap = read
        case let .failure(refusal): return refusal.reply
        }
        let report: SecondaryReplica.CommitReport
        do {
            report = try replica.commit(guestDirty: bitmap)
        } catch {
            return refuse(error)
        }
        if report.verification.checked && !report.verification.identical {
            logger.error("verify: RAM differs from the primary's after checkpoint \(report.sequence)", metadata: [
                "event": "verify_mismatch", "checkpoint": "\(report.sequence)",
                "chunks_differing": "\(report.verification.chunksDiffering)",
                "first_difference_offset": "\(report.verification.firstDifferenceOffset)",
            ])
        }
        logger.info("checkpoint \(report.sequence) committed", metadata: [
            "event": "checkpoint_committed", "checkpoint": "\(report.sequence)",
            "pages_copied": "\(report.pagesCopied)", "copy_us": "\(report.copyNanoseconds / 1000)",
            "wait_us": "\(report.waitNanoseconds / 1000)",
        ])
        let memfd: Memfd
        do {
            memfd = try Memfd.holding(report.deviceState, name: "colo-device-state")
        } catch {
            return .error(.internal, "checkpoint \(report.sequence) is committed, but its device state cannot be handed over: \(error)")
        }
        var reply = ColoCheckpointCommitted()
        reply.sequence = report.sequence
        reply.deviceState.index = 0
        reply.deviceStateBytes = UInt64(report.deviceState.count)
        reply.pagesCopied = report.pagesCopied
        reply.waitUs = report.waitNanoseconds / 1000
        reply.copyUs = report.copyNanoseconds / 1000
        reply.verification = message(report.verification)
        return ControlReply(.checkpointCommitted(reply), fds: [memfd.fd], closeFdsAfterSending: true)
    }

    private func receive() -> ControlReply {
        guard case let .secondary(replica, _) = pairing.withLock({ $0 }) else {
            return .error(.failedPrecondition, "not paired as secondary")
        }
        let arrival: SecondaryReplica.Arrival
        do {
            arrival = try replica.receive()
        } catch {
            return refuse(error)
        }
        logger.info("checkpoint \(arrival.sequence) arrived whole", metadata: [
            "event": "checkpoint_received", "checkpoint": "\(arrival.sequence)",
            "wait_us": "\(arrival.waitNanoseconds / 1000)", "device_state_bytes": "\(arrival.deviceState.count)",
        ])
        let memfd: Memfd
        do {
            memfd = try Memfd.holding(arrival.deviceState, name: "colo-device-state")
        } catch {
            return .error(.internal, "checkpoint \(arrival.sequence): its device state cannot be handed over: \(error)")
        }
        var reply = ColoCheckpointReceived()
        reply.sequence = arrival.sequence
        reply.deviceState.index = 0
        reply.deviceStateBytes = UInt64(arrival.deviceState.count)
        reply.waitUs = arrival.waitNanoseconds / 1000
        return ControlReply(.checkpointReceived(reply), fds: [memfd.fd], closeFdsAfterSending: true)
    }

    private func refuse(_ request: ColoCheckpointRefuse) -> ControlReply {
        guard case let .secondary(replica, _) = pairing.withLock({ $0 }) else {
            return .error(.failedPrecondition, "not paired as secondary")
        }
        let reason = request.reason.isEmpty ? "no reason given" : String(request.reason.prefix(512))
        do {
            let sequence = try replica.refuse(reason: reason)
            logger.error("checkpoint \(sequence) refused: \(reason); the SVM stays at the last commit", metadata: [
                "event": "checkpoint_refused", "checkpoint": "\(sequence)", "error": "\(reason)",
            ])
            var reply = ColoCheckpointRefused()
            reply.sequence = sequence
            return ControlReply(.checkpointRefused(reply))
        } catch {
            return refuse(error)
        }
    }

    private func status() -> ColoCheckpointStatus {
        var status = ColoCheckpointStatus()
        switch pairing.withLock({ $0 }) {
        case .detached:
            status.link = "detached"
        case .attaching:
            status.link = "attaching"
        case let .primary(replicator, options):
            status.role = .primary
            status.lastError = replicator.failure ?? ""
            status.link = replicator.failure == nil ? "connected" : "failed"
            status.committedSequence = replicator.committedSequence
            status.guestMemoryBytes = UInt64(replicator.pageCount * PageFrame.pageSize)
            status.verify = options.verify
            let progress = replicator.progress
            status.progress.bytesTransferred = progress.bytesSent
            status.progress.pagesTransferred = progress.pagesSent
            status.progress.zeroPages = progress.zeroPages
            status.progress.dirtyPagesLeft = progress.dirtyPagesLeft
            status.progress.bytesPerSecond = progress.bytesPerSecond
            status.progress.rounds = progress.rounds
            status.progress.lastRoundPages = progress.lastRoundPages
            status.progress.stopAndCopyAdvised = progress.stopAndCopyAdvised
        case let .secondary(replica, options):
            status.role = .secondary
            status.lastError = replica.failure ?? ""
            status.link = replica.failure == nil ? "connected" : "failed"
            status.committedSequence = replica.committedSequence
            status.guestMemoryBytes = UInt64(replica.pageCount * PageFrame.pageSize)
            status.verify = options.verify
            let progress = replica.progress
            status.progress.bytesTransferred = progress.bytesReceived
            status.progress.pagesTransferred = progress.pagesReceived
            status.progress.zeroPages = progress.zeroPages
            let summary = replica.verificationSummary
            status.commitsVerified = summary.commits
            status.verifyMismatches = summary.mismatches
            status.lastVerification = message(summary.last)
        }
        return status
    }

    // MARK: - Helpers

    private func readBitmap(_ ref: ColoFdRef, hasRef: Bool, pageCount: Int, fds: inout HandedFds)
        -> Result<PageBitmap, ReplyError> {
        guard hasRef, let fd = fds.claim(ref) else { return .failure(ReplyError(.error(.missingFd, "the dirty bitmap names no fd"))) }
        defer { try? fd.close() }
        do {
            let bytes = try Memfd(adopting: fd).readAll(limit: PageBitmap.byteCount(pages: pageCount))
            return .success(try PageBitmap(serialized: bytes, pageCount: pageCount))
        } catch {
            return .failure(ReplyError(.error(.invalidArgument, "dirty bitmap: \(error)")))
        }
    }

    private func refuse(_ error: CheckpointError) -> ControlReply {
        if case .linkFailed = error {
            logger.error("\(error)", metadata: ["event": "link_failed", "error": "\(error)"])
        }
        return .error(code(for: error), "\(error)")
    }

    private func code(for error: CheckpointError) -> ColoErrorCode {
        switch error {
        case .invalidArgument: return .invalidArgument
        case .wrongState: return .failedPrecondition
        case .authentication: return .permissionDenied
        case .linkFailed: return .unavailable
        }
    }

    private func message(_ verification: Verification) -> ColoCheckpointVerification {
        var message = ColoCheckpointVerification()
        message.checked = verification.checked
        message.identical = verification.identical
        message.chunksCompared = verification.chunksCompared
        message.chunksDiffering = verification.chunksDiffering
        message.firstDifferenceOffset = verification.firstDifferenceOffset
        return message
    }
}

/// A reply carried through Result's failure side.
struct ReplyError: Error {
    let reply: ControlReply
    init(_ reply: ControlReply) { self.reply = reply }
}

/// The fds of one request: each may be claimed once by the FdRef naming it;
/// the rest are closed when the request is done.
struct HandedFds {
    private var fds: [FileDescriptor?]

    init(_ fds: [FileDescriptor]) {
        self.fds = fds
    }

    mutating func claim(_ ref: ColoFdRef) -> FileDescriptor? {
        let index = Int(ref.index)
        guard index < fds.count, let fd = fds[index] else { return nil }
        fds[index] = nil
        return fd
    }

    func closeUnclaimed() {
        for case let fd? in fds { try? fd.close() }
    }
}
