import Durations
import ColoProtocol
import ControlSocket
import Glibc
import Logging
import PairConfiguration
import PairMetrics
import PairStateMachine
import PairSupervision
import Synchronization
import SystemPackage

/// What the pair's transitions do on this host: the one `PairActuator`
/// supervisord runs. It boots or prepares the VM, opens the data channels,
/// runs the live migration that makes a secondary, the checkpoints of the
/// lock-step, and the failover steps, by calling the local daemons
/// (DESIGN.md sections 4 and 7).
///
/// Threads: the supervisor's sync thread runs `synchronize`; in lock-step
/// the primary's scheduler thread takes checkpoints (periodic, on proxyd's
/// request, on an operator's), and the secondary's step thread answers
/// them. One lock serialises checkpoints against failover, so a takeover
/// never meets a half-loaded VM: it waits for the load to finish or fail.
public final class GuestReplication: PairActuator {
    struct Shared {
        var frames: FileDescriptor?
        /// The authenticated-later frames link to the peer proxyd.
        var framesLink: FileDescriptor?
        var session: PeerSession?
        var lockstep = false
        /// Counts the lock-step runs: a scheduler or step loop serves the
        /// run it was started for, never a later one.
        var lockstepRun: UInt64 = 0
        /// Set when the peer is lost or replication stops: a checkpoint
        /// waiting on the peer gives up at once.
        var abandoned = false
        var proxyAttached = false
        var nextStep: UInt64 = 1
        /// The last checkpoint taken (an operator's request waits for the next).
        var lastCheckpoint: CheckpointRecord?
        /// A sync is waiting for the primary's data channels: only then
        /// are inbound data connections taken.
        var expectingChannels = false
        /// Running without a partner, serving the clients.
        var runningAlone = false
        /// Where the supervisor hears what it must decide on.
        var reports: ReplicationReports?
    }

    let configuration: HostConfiguration
    let guest: LocalGuest
    let daemons: LocalDaemons
    let logger: Logger
    /// Where checkpoints, failovers, mismatches and progress are recorded
    /// for `coloctl status` and Prometheus.
    let metrics: PairMetrics
    /// The host's external interface: a tap opened by supervisord at start.
    let tap: FileDescriptor
    let mailbox = PeerMailbox()
    let shared = Mutex(Shared())
    /// A checkpoint asked for (by proxyd, by an operator) and not yet
    /// taken: the primary's scheduler sleeps on it between its timed tasks.
    let checkpointTriggers = Monitor<CheckpointTrigger?>(nil)
    /// Held for a whole checkpoint, and by failover before it acts.
    let checkpointLock = Mutex(())

    public init(configuration: HostConfiguration, daemons: LocalDaemons, tap: FileDescriptor,
                stateDirectory: String, metrics: PairMetrics, logger: Logger) {
        self.configuration = configuration
        self.metrics = metrics
        self.daemons = daemons
        self.tap = tap
        self.logger = logger
        guest = LocalGuest(daemons: daemons, configuration: configuration, stateDirectory: stateDirectory)
    }

    /// Brings the local guest up as the pair's state says: a primary boots
    /// its VM and serves (alone, straight to the network, until a secondary
    /// joins); a secondary waits for the primary to migrate one to it.
    public func start(role: PairRole, state: PairState, reports: ReplicationReports) throws(ActuationError) {
        shared.withLock { $0.reports = reports }
        spawnThread(name: "local-health") { [self] in watchLocalDaemons() }
        guard role == .primary, state != .fenced else { return }
        let plumbing = try guest.boot()
        replaceFrames(plumbing.frames)
        logger.notice("guest booted", metadata: event("guest_booted"))
        if state == .alone {
            try attachProxy(role: .passThrough)
            shared.withLock { $0.runningAlone = true }
        }
    }

    // MARK: - PairActuator

    public func synchronize(as role: PairRole, session: PeerSession) -> Result<Void, SupervisionError> {
        shared.withLock { $0.session = session; $0.abandoned = false }
        do {
            if role == .primary {
                // A survivor bringing a new partner up is resyncing; a first
                // sync is the initial migration.
                let kind: LongOperationKind = shared.withLock { $0.runningAlone } ? .resync : .migration
                try migrateOut(session: session, kind: kind)
            } else {
                try migrateIn(session: session)
            }
            return .success(())
        } catch {
            metrics.endOperation()
            logger.error("sync failed: \(error)", metadata: event("sync_failed").merging(["error": "\(error)"]) { $1 })
            return .failure(.peer("\(error)"))
        }
    }

    public func startLockstep(as role: PairRole) {
        let run = shared.withLock { shared -> UInt64 in
            shared.lockstep = true
            shared.abandoned = false
            shared.runningAlone = false
            shared.lockstepRun += 1
            return shared.lockstepRun
        }
        metrics.setReplicating(true)
        logger.notice("lock-step running", metadata: event("lockstep_started"))
        if role == .primary {
            spawnThread(name: "checkpoint-scheduler") { [self] in scheduleCheckpoints(run: run) }
        } else {
            spawnThread(name: "checkpoint-steps") { [self] in serveSteps(run: run) }
        }
    }

    /// Whether lock-step run `run` is still the one going on.
    func inLockstep(run: UInt64) -> Bool {
        shared.withLock { $0.lockstep && $0.lockstepRun == run }
    }

    public func stopReplication() {
        shared.withLock { $0.lockstep = false; $0.abandoned = true }
        metrics.setReplicating(false)
    }

    public func takeOver() {
        shared.withLock { $0.lockstep = false; $0.abandoned = true }
        checkpointLock.withLock { _ in
            do {
                try guest.diskFailover()
            } catch {
                logger.error("disk failover: \(error)", metadata: event("failover_disk_failed"))
            }
            goAlone()
            metrics.recordFailover()
        }
    }

    public func continueAlone() {
        shared.withLock { $0.lockstep = false; $0.abandoned = true }
        // Before waiting for a checkpoint in flight: guest writes waiting on
        // the lost secondary complete locally now.
        do {
            try guest.diskFailover()
        } catch {
            logger.error("disk: dropping the secondary failed: \(error)", metadata: event("disk_detach_failed"))
        }
        checkpointLock.withLock { _ in goAlone() }
    }

    public func fence(reason: String) {
        shared.withLock { $0.lockstep = false; $0.abandoned = true }
        checkpointLock.withLock { _ in
            // Another host holds the pair: this guest must say nothing more.
            try? guest.pause()
        }
    }

    // MARK: - Failback

    public func handOver() -> Result<Void, SupervisionError> {
        // The scheduler stops after the checkpoint it may be taking; the
        // handover's checkpoint comes after it.
        shared.withLock { $0.lockstep = false }
        do {
            try checkpoint(trigger: .operator, kind: .handover)
            metrics.setReplicating(false)
            return .success(())
        } catch {
            return .failure(.peer("\(error)"))
        }
    }

    public func standDown() {
        shared.withLock { shared in
            shared.lockstep = false
            shared.abandoned = true
            shared.runningAlone = false
            shared.proxyAttached = false
            shared.framesLink = nil
        }
        replaceFrames(nil)
        checkpointLock.withLock { _ in
            do {
                try guest.release()
                logger.notice("guest stopped and disk released for the new primary", metadata: event("stood_down"))
            } catch {
                logger.error("standing down: \(error)", metadata: event("stand_down_failed"))
            }
        }
    }

    public func resumeLockstep() {
        do {
            try guest.resume()
        } catch {
            // A failed last checkpoint resumed the VM already.
            logger.debug("resume: \(error)", metadata: event("resume_skipped"))
        }
        startLockstep(as: .primary)
    }

    public func inbound(channel: String, fd: Int32) {
        guard DataChannels.names(pageChannels: configuration.checkpoint.ramChannels).contains(channel) else {
            logger.warning("connection for unknown channel \(channel) refused", metadata: event("inbound_refused")
                .merging(["channel": "\(channel)"]) { $1 })
            close(fd)
            return
        }
        guard shared.withLock({ $0.expectingChannels }) else {
            logger.warning("unexpected \(channel) connection refused: no sync is waiting for it",
                           metadata: event("inbound_refused").merging(["channel": "\(channel)"]) { $1 })
            close(fd)
            return
        }
        mailbox.deliver(connection: fd, channel: channel)
    }

    public func received(_ message: PeerMessage, on session: PeerSession) {
        switch message.body {
        case .stepRequest(let request): mailbox.deliver(request, on: ObjectIdentifier(session))
        case .stepDone(let answer): mailbox.deliver(answer)
        default: break
        }
    }

    // MARK: - Running alone

    /// proxyd straight to the network (held packets released, gratuitous
    /// ARP for the guest's address), the VM running.
    private func goAlone() {
        do {
            if shared.withLock({ $0.proxyAttached }) {
                try daemons.call(.proxyd, .proxyPassThrough(ColoProxyPassThrough()))
            } else {
                try attachProxy(role: .passThrough)
            }
        } catch {
            logger.error("proxyd pass-through: \(error)", metadata: event("pass_through_failed"))
        }
        do {
            try guest.resume()
        } catch {
            // Running already is the usual case.
            logger.debug("resume: \(error)", metadata: event("resume_skipped"))
        }
        shared.withLock { $0.runningAlone = true }
        logger.notice("running alone", metadata: event("running_alone"))
    }

    // MARK: - proxyd

    func attachProxy(role: ColoProxyRole) throws(ActuationError) {
        let (frames, link) = shared.withLock { ($0.frames, $0.framesLink) }
        guard let frames else { throw .state("no guest frame socket to attach proxyd to") }
        var request = ColoProxyAttach()
        request.role = role
        request.compareTimeoutMs = UInt32(configuration.checkpoint.compareTimeout.milliseconds)
        request.queueLimit = UInt32(configuration.checkpoint.queueLimit)
        request.guestMac = configuration.network.guestMAC.map { hex($0) }.joined(separator: ":")
        request.guestAddresses = [configuration.network.guestIP.description]
        var fds: [FileDescriptor] = []
        var owned: [FileDescriptor] = []
        defer { owned.forEach { try? $0.close() } }
        request.guest = .at(fds.count)
        fds.append(frames)
        request.external = .at(fds.count)
        fds.append(tap)
        var events: FileDescriptor?
        if role != .passThrough {
            guard let link else { throw .state("no frames link to the peer") }
            request.peer = .at(fds.count)
            fds.append(link)
            owned.append(link)
        }
        if role == .primary {
            let (ours, proxyds) = try guest.socketPair("events")
            request.events = .at(fds.count)
            fds.append(proxyds)
            owned.append(proxyds)
            events = ours
        }
        do {
            try daemons.call(.proxyd, .proxyAttach(request), fds: fds)
        } catch {
            try? events?.close()
            throw error
        }
        shared.withLock {
            $0.proxyAttached = true
            if role != .passThrough { $0.framesLink = nil }
        }
        if let events {
            spawnThread(name: "proxy-events") { [self] in readProxyEvents(events) }
        }
        logger.info("proxyd attached as \(role)", metadata: event("proxy_attached"))
    }

    /// proxyd's checkpoint requests become checkpoint triggers.
    private func readProxyEvents(_ fd: FileDescriptor) {
        defer { try? fd.close() }
        let socket = SeqpacketSocket(adopting: fd)
        while true {
            let datagram: ReceivedDatagram
            do {
                guard let received = try socket.receive(maxBytes: 4096) else { return }
                datagram = received
            } catch {
                return
            }
            datagram.fds.forEach { try? $0.close() }
            guard let proxyEvent = try? ColoProxyEvent(serializedBytes: datagram.bytes) else { continue }
            switch proxyEvent.body {
            case .checkpointRequest(let request):
                let trigger = CheckpointTrigger(request.reason)
                checkpointTriggers.withLock(notify: true) { if $0 == nil { $0 = trigger } }
            case .linkLost(let lost):
                logger.warning("proxyd lost its peer link: \(lost.reason)", metadata: event("proxy_link_lost"))
            case .none:
                break
            }
        }
    }

    // MARK: - Helpers

    /// The proxyd end of a new VM's frame socket (nil: the VM is gone);
    /// the old one is closed.
    func replaceFrames(_ frames: FileDescriptor?) {
        let previous = shared.withLock { shared -> FileDescriptor? in
            defer { shared.frames = frames }
            return shared.frames
        }
        try? previous?.close()
    }

    func event(_ name: String) -> Logger.Metadata {
        ["event": "\(name)", "pair": "\(configuration.pair.name)", "host": "\(configuration.pair.host)"]
    }

    /// The next step the primary asks for on the current link.
    func nextRequest(timeout: Duration) throws(ActuationError) -> PeerStepRequest {
        guard let session = shared.withLock({ $0.session }) else { throw .peer("no link to the peer") }
        return try mailbox.request(on: ObjectIdentifier(session), timeout: timeout)
    }

    func nextStep() -> UInt64 {
        shared.withLock { shared in
            defer { shared.nextStep += 1 }
            return shared.nextStep
        }
    }

    func send(_ request: PeerStepRequest) throws(ActuationError) {
        guard let session = shared.withLock({ $0.session }) else { throw .peer("no link to the peer") }
        var message = PeerMessage()
        message.stepRequest = request
        do { try session.send(message, timeout: .seconds(2)) } catch { throw .peer("\(error)") }
    }

    func answer(_ sequence: UInt64, error: String, duration: Duration) {
        guard let session = shared.withLock({ $0.session }) else { return }
        var done = PeerStepDone()
        done.sequence = sequence
        done.error = error
        done.durationUs = UInt64(max(0, duration.microseconds))
        var message = PeerMessage()
        message.stepDone = done
        try? session.send(message, timeout: .seconds(2))
    }
}

private func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
}
