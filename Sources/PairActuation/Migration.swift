import Durations
import ColoProtocol
import Glibc
import PairMetrics
import PairSupervision
import SystemPackage

extension GuestReplication {
    /// The primary makes a secondary: the peer prepares an incoming VM, the
    /// data channels open, the disk is mirrored, RAM is copied in pre-copy
    /// rounds while the guest runs, and the first checkpoint is the
    /// stop-and-copy; then proxyd starts comparing.
    func migrateOut(session: PeerSession, kind: LongOperationKind) throws(ActuationError) {
        let started = ContinuousClock.now
        metrics.beginOperation(kind, totalBytes: configuration.guest.memoryBytes)
        mailbox.clearStale()
        var request = PeerStepRequest()
        request.step = .sync
        request.sequence = nextStep()
        try send(request)
        let ready = try mailbox.answer(to: request.sequence, timeout: .seconds(60))
        guard ready.error.isEmpty else { throw .peer("the secondary cannot prepare: \(ready.error)") }

        let channels = try DataChannels.dial(configuration.pair.peer, pageChannels: configuration.checkpoint.ramChannels)
        shared.withLock { $0.framesLink = channels.frames }
        try guest.attachDiskLink(channels.disk, resync: true)
        try attachCheckpointd(primary: true, channels: channels)
        try precopy()
        try waitForDiskReplication()
        try checkpoint(trigger: .periodic, kind: .stopAndCopy)
        metrics.endOperation()
        logger.notice("secondary synchronised in \(ContinuousClock.now - started)", metadata: event("sync_completed"))
    }

    /// The secondary side of `migrateOut`.
    func migrateIn(session: PeerSession) throws(ActuationError) {
        let request = try nextRequest(timeout: .seconds(60))
        guard request.step == .sync else { throw .peer("the primary asked for \(request.step) before a sync") }
        let started = ContinuousClock.now
        do {
            let plumbing = try guest.prepareIncoming()
            replaceFrames(plumbing.frames)
        } catch {
            answer(request.sequence, error: "\(error)", duration: ContinuousClock.now - started)
            throw error
        }
        mailbox.clearStale()
        shared.withLock { $0.expectingChannels = true }
        answer(request.sequence, error: "", duration: ContinuousClock.now - started)

        let taken = Result { () throws(ActuationError) -> DataChannels in
            try DataChannels.take(from: mailbox, pageChannels: configuration.checkpoint.ramChannels, timeout: .seconds(20))
        }
        shared.withLock { $0.expectingChannels = false }
        mailbox.clearStale()
        let channels = try taken.get()
        shared.withLock { $0.framesLink = channels.frames }
        try guest.attachDiskLink(channels.disk, resync: false)
        try attachCheckpointd(primary: false, channels: channels)
        // The stop-and-copy comes once the primary's pre-copy converged.
        let first = try nextRequest(timeout: .seconds(600))
        guard first.step == .checkpoint else { throw .peer("the primary asked for \(first.step) to end the sync") }
        try secondaryCheckpoint(first, incoming: true)
    }

    private func attachCheckpointd(primary: Bool, channels: DataChannels) throws(ActuationError) {
        let memory = try guest.memory()
        let fds = [memory, channels.checkpointControl] + channels.checkpointPages
        defer { fds.forEach { try? $0.close() } }
        var attach = ColoCheckpointAttach()
        attach.role = primary ? .primary : .secondary
        // The secondary's VM is a fresh incoming one that does not run
        // before the first commit: pages go straight into its RAM.
        attach.incoming = !primary
        attach.guestMemory = .at(0)
        attach.controlChannel = .at(1)
        attach.pageChannels = channels.checkpointPages.indices.map { .at(2 + $0) }
        // A checkpoint that stalls longer than this is abandoned whole; it is
        // also how long a primary stays paused when its secondary dies
        // during a checkpoint.
        attach.peerTimeoutMs = UInt32(clamping: max(configuration.heartbeat.timeout.milliseconds * 2, 1000))
        try daemons.call(.checkpointd, .checkpointAttach(attach), fds: fds, timeout: .seconds(30))
    }

    /// Rounds of dirty pages while the guest runs, until checkpointd judges
    /// the rest small enough for the stop-and-copy, or the rounds run out.
    private func precopy() throws(ActuationError) {
        // Start the dirty log afresh: everything is sent in the first round.
        try? guest.dirtyLog().close()
        var all = ColoCheckpointSendPages()
        all.allPages = true
        try daemons.call(.checkpointd, .checkpointSendPages(all))
        let maxRounds = 10
        for round in 1...maxRounds {
            let progress = try waitForRound()
            if progress.stopAndCopyAdvised || round == maxRounds { break }
            let bitmap = try guest.dirtyLog()
            defer { try? bitmap.close() }
            var next = ColoCheckpointSendPages()
            next.dirtyBitmap = .at(0)
            try daemons.call(.checkpointd, .checkpointSendPages(next), fds: [bitmap])
        }
    }

    private func waitForRound() throws(ActuationError) -> ColoCheckpointProgress {
        let deadline = ContinuousClock.now.advanced(by: .seconds(600))
        let total = configuration.guest.memoryBytes
        while ContinuousClock.now < deadline {
            let (body, _) = try daemons.call(.checkpointd, .checkpointStatus(ColoCheckpointStatusRequest()))
            guard case .checkpointStatus(let status)? = body else { throw .daemon(.checkpointd, "no status") }
            if !status.lastError.isEmpty { throw .daemon(.checkpointd, status.lastError) }
            let progress = status.progress
            metrics.updateOperation(doneBytes: progress.bytesTransferred,
                                    totalBytes: max(total, progress.bytesTransferred + progress.dirtyPagesLeft * 4096))
            if progress.dirtyPagesLeft == 0 { return progress }
            usleep(5_000)
        }
        throw .timedOut("a pre-copy round")
    }

    private func waitForDiskReplication() throws(ActuationError) {
        let deadline = ContinuousClock.now.advanced(by: .seconds(600))
        while ContinuousClock.now < deadline {
            let disk = try guest.diskInfo()
            if disk.state == "replicating" { return }
            if disk.state == "solo" && !disk.detail.isEmpty { throw .daemon(.blockd, disk.detail) }
            _ = disk
            usleep(10_000)
        }
        throw .timedOut("the disk mirror to converge")
    }
}
