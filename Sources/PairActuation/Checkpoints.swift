import Durations
import ColoProtocol
import ControlSocket
import Glibc
import PairMetrics
import PairSupervision
import SystemPackage

/// Where a primary's checkpoint stands in the pair's life.
enum CheckpointKind {
    /// One of the lock-step's.
    case lockstep
    /// The migration's last step: proxyd starts comparing after it.
    case stopAndCopy
    /// The last before a handover (failback): the VM stays paused.
    case handover
}

extension GuestReplication {
    /// The primary's checkpoint (DESIGN.md section 4): ask the secondary,
    /// pause, drain the disk's replicated writes, send the dirty pages and
    /// the device state, release the held packets once the secondary has
    /// committed, resume when it has loaded.
    func checkpoint(trigger: CheckpointTrigger, kind: CheckpointKind = .lockstep) throws(ActuationError) {
        try checkpointLock.withLock { _ throws(ActuationError) in
            guard kind != .lockstep || shared.withLock({ $0.lockstep }) else {
                throw .state("the pair is not in lock-step")
            }
            var request = PeerStepRequest()
            request.step = kind == .handover ? .handover : .checkpoint
            request.sequence = nextStep()
            try send(request)

            let pausedAt = ContinuousClock.now
            try guest.pause()
            var resumed = false
            defer { if !resumed { try? guest.resume() } }
            try guest.diskCheckpoint()
            let bitmap = try guest.dirtyLog()
            defer { try? bitmap.close() }
            let state = try guest.saveState()
            defer { try? state.close() }
            var take = ColoCheckpointTake()
            take.dirtyBitmap = .at(0)
            take.deviceState = .at(1)
            let (body, _) = try daemons.call(.checkpointd, .checkpointTake(take), fds: [bitmap, state],
                                             timeout: .seconds(60))
            guard case .checkpointTaken(let taken)? = body else { throw .daemon(.checkpointd, "no report") }
            if kind != .stopAndCopy {
                try daemons.call(.proxyd, .proxyCheckpointDone(ColoProxyCheckpointDone()))
            }
            let answer = try waitForAnswer(request.sequence)
            guard answer.error.isEmpty else {
                throw .peer("the secondary could not load checkpoint \(taken.sequence): \(answer.error)")
            }
            switch kind {
            case .lockstep: try guest.resume()
            case .stopAndCopy:
                try attachProxy(role: .primary)
                try guest.resume()
            case .handover: break
            }
            resumed = true
            let pause = ContinuousClock.now - pausedAt
            let record = CheckpointRecord(sequence: taken.sequence, trigger: trigger, pause: pause, at: .now)
            shared.withLock { $0.lastCheckpoint = record }
            if kind != .stopAndCopy {
                metrics.recordCheckpoint(id: taken.sequence, trigger: trigger, pause: pause)
            }
            let name = switch kind {
            case .lockstep: trigger.rawValue
            case .stopAndCopy: "stop-and-copy"
            case .handover: "handover"
            }
            logger.info("checkpoint \(taken.sequence) (\(name)): paused \(pause)", metadata: event("checkpoint")
                .merging(["checkpoint": "\(taken.sequence)", "trigger": "\(name)",
                          "pause_us": "\(pause.microseconds)", "pages": "\(taken.pagesSent)"]) { $1 })
        }
    }

    /// Waits for the secondary's answer, giving up early when the pair
    /// leaves lock-step (the peer was declared lost meanwhile).
    private func waitForAnswer(_ sequence: UInt64) throws(ActuationError) -> PeerStepDone {
        let deadline = ContinuousClock.now.advanced(by: max(configuration.heartbeat.timeout, .seconds(2)) + .seconds(10))
        while true {
            if let answer = try? mailbox.answer(to: sequence, timeout: .milliseconds(50)) { return answer }
            if ContinuousClock.now > deadline { throw .timedOut("the secondary to load the checkpoint") }
            if shared.withLock({ $0.abandoned }) { throw .peer("the pair left lock-step during the checkpoint") }
        }
    }

    /// The secondary's checkpoint: pause, commit the checkpoint into the
    /// VM's RAM (the pages either side dirtied), load the device state,
    /// empty the disk overlays, reset proxyd, resume, answer. A checkpoint
    /// that fails to arrive whole leaves the VM on its last committed state.
    func secondaryCheckpoint(_ request: PeerStepRequest, incoming: Bool = false) throws(ActuationError) {
        let started = ContinuousClock.now
        do {
            try checkpointLock.withLock { _ throws(ActuationError) in
                // An incoming VM has not run: nothing of its own is dirty,
                // and checkpointd wrote the pages into its RAM as they came.
                var resumed = incoming
                if !incoming { try guest.pause() }
                defer { if !resumed { try? guest.resume() } }
                let bitmap = incoming ? try guest.emptyDirtyLog() : try guest.dirtyLog()
                defer { try? bitmap.close() }
                if !incoming { try receiveAndCheck() }
                var commit = ColoCheckpointCommit()
                commit.guestDirtyBitmap = .at(0)
                let (body, fds) = try daemons.call(.checkpointd, .checkpointCommit(commit), fds: [bitmap],
                                                   timeout: .seconds(60))
                guard case .checkpointCommitted(let committed)? = body, Int(committed.deviceState.index) < fds.count else {
                    fds.forEach { try? $0.close() }
                    throw .daemon(.checkpointd, "the commit reply carries no device state")
                }
                defer { fds.forEach { try? $0.close() } }
                try guest.loadState(fds[Int(committed.deviceState.index)])
                if incoming {
                    // Start the dirty log before the VM first runs, so the
                    // next commit copies only what it wrote, not all of RAM.
                    try? guest.dirtyLog().close()
                }
                try guest.diskCheckpoint()
                if shared.withLock({ $0.proxyAttached }) {
                    try daemons.call(.proxyd, .proxyCheckpointDone(ColoProxyCheckpointDone()))
                } else {
                    try attachProxy(role: .secondary)
                }
                try guest.resume()
                resumed = true
                logger.info("checkpoint \(committed.sequence) loaded", metadata: event("checkpoint_loaded")
                    .merging(["checkpoint": "\(committed.sequence)", "pages": "\(committed.pagesCopied)"]) { $1 })
            }
        } catch {
            answer(request.sequence, error: "\(error)", duration: ContinuousClock.now - started)
            logger.error("checkpoint failed: \(error)", metadata: event("checkpoint_failed"))
            throw error
        }
        answer(request.sequence, error: "", duration: ContinuousClock.now - started)
    }

    /// Waits for the whole checkpoint and has vmmd check its device state
    /// before anything is written into the secondary VM's RAM: a blob vmmd
    /// would refuse is refused to the primary, and the VM stays whole on its
    /// last committed state.
    private func receiveAndCheck() throws(ActuationError) {
        let (body, fds) = try daemons.call(.checkpointd, .checkpointReceive(ColoCheckpointReceive()), timeout: .seconds(60))
        defer { fds.forEach { try? $0.close() } }
        guard case .checkpointReceived(let received)? = body, Int(received.deviceState.index) < fds.count else {
            throw .daemon(.checkpointd, "the receive reply carries no device state")
        }
        do {
            try guest.loadState(fds[Int(received.deviceState.index)], checkOnly: true)
        } catch {
            var refuse = ColoCheckpointRefuse()
            refuse.reason = "\(error)"
            _ = try? daemons.call(.checkpointd, .checkpointRefuse(refuse))
            throw error
        }
    }

    /// The primary's lock-step loop: a checkpoint when proxyd asks, when an
    /// operator asks, or when the maximum interval has passed. Between
    /// them it sleeps until a trigger comes or a timed task is due (at most
    /// 50 ms, to see the end of lock-step): the guests need the cores.
    func scheduleCheckpoints(run: UInt64) {
        let interval = configuration.checkpoint.maxInterval
        let backgroundInterval = max(interval / 8, .milliseconds(50))
        var last = ContinuousClock.now
        var lastBackground = last
        var lastCounters = last
        while inLockstep(run: run) {
            let wake = min(last + interval, lastBackground + backgroundInterval, lastCounters + .seconds(1),
                           ContinuousClock.now + .milliseconds(50))
            let sleep = UInt64(max(0, (wake - ContinuousClock.now).microseconds)) * 1000
            let trigger = checkpointTriggers.wait(deadline: monotonicNanoseconds() + sleep) { pending in
                defer { pending = nil }
                return pending
            }
            let now = ContinuousClock.now
            guard let chosen = trigger ?? (now - last >= interval ? .periodic : nil) else {
                if now - lastBackground >= backgroundInterval {
                    sendDirtyPagesInBackground()
                    lastBackground = ContinuousClock.now
                }
                if now - lastCounters >= .seconds(1) {
                    recordCounters()
                    lastCounters = ContinuousClock.now
                }
                continue
            }
            do {
                try checkpoint(trigger: chosen)
            } catch {
                logger.error("checkpoint failed: \(error)", metadata: event("checkpoint_failed"))
                // The supervisor's watchdog decides whether the peer is gone;
                // until then, do not spin on a failing peer.
                usleep(200_000)
            }
            last = ContinuousClock.now
        }
    }

    /// Between checkpoints, the pages dirtied so far go to the secondary's
    /// colo-cache while the guest runs, so the next checkpoint's pause only
    /// carries what was dirtied since (DESIGN.md section 4). checkpointd
    /// counts them in the checkpoint's sent set.
    private func sendDirtyPagesInBackground() {
        do {
            let bitmap = try guest.dirtyLog()
            defer { try? bitmap.close() }
            var round = ColoCheckpointSendPages()
            round.dirtyBitmap = .at(0)
            try daemons.call(.checkpointd, .checkpointSendPages(round), fds: [bitmap])
        } catch {
            logger.warning("background pages not sent: \(error)", metadata: event("background_round_failed"))
        }
    }

    /// proxyd's mismatches and checkpointd's backlog, for the metrics.
    private func recordCounters() {
        if case .proxyCounters(let counters)? = try? daemons.call(.proxyd, .proxyCounters(ColoProxyCountersRequest())).0 {
            metrics.recordProxyCounters(counters)
        }
        if case .checkpointStatus(let status)? = try? daemons.call(.checkpointd, .checkpointStatus(ColoCheckpointStatusRequest())).0 {
            metrics.recordReplicationLag(bytes: status.progress.dirtyPagesLeft * 4096)
        }
    }

    /// The secondary's lock-step loop: answer each checkpoint request. A
    /// handover's checkpoint, once loaded, is reported to the supervisor,
    /// which claims the pair.
    func serveSteps(run: UInt64) {
        while inLockstep(run: run) {
            guard let request = try? nextRequest(timeout: .milliseconds(200)) else { continue }
            guard request.step == .checkpoint || request.step == .handover else {
                answer(request.sequence, error: "step \(request.step) is not taken in lock-step", duration: .zero)
                continue
            }
            do {
                try secondaryCheckpoint(request)
            } catch {
                continue
            }
            if request.step == .handover, let report = shared.withLock({ $0.reports?.handoverRequested }) {
                // The claim stops this loop: it runs on a thread of its own.
                spawnThread(name: "handover") { report() }
            }
        }
    }

    /// An operator's checkpoint: runs at the scheduler's next turn; returns
    /// its record.
    public func requestCheckpoint(timeout: Duration = .seconds(60)) throws(ActuationError) -> CheckpointRecord {
        let before = shared.withLock { shared -> UInt64? in
            guard shared.lockstep else { return nil }
            return shared.lastCheckpoint?.sequence ?? 0
        }
        guard let before else { throw .state("checkpoints are taken in lock-step only") }
        checkpointTriggers.withLock(notify: true) { $0 = .operator }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if let record = shared.withLock({ $0.lastCheckpoint }), record.sequence > before { return record }
            usleep(1000)
        }
        throw .timedOut("the checkpoint")
    }
}
