import Durations
import ColoProtocol
import ControlSocket
import DurableFile
import Glibc
import Logging
import PairConfiguration
import PairStateMachine
import PeerAuthentication
import PeerLink
import Synchronization
import Witness

/// What the pair's transitions do to the local daemons (the VM, the packet
/// comparison, the disk, checkpoints). The supervisor decides when; the
/// actuator does. Each call returns once the step is done or has failed.
public protocol PairActuator: Sendable {
    /// Brings the partner up to date (RAM migration and disk), in `role`.
    func synchronize(as role: PairRole, session: PeerSession) -> Result<Void, SupervisionError>
    func startLockstep(as role: PairRole)
    func stopReplication()
    /// The secondary becomes the primary: disk overlays committed, proxyd to
    /// pass-through with gratuitous ARP, the VM runs on.
    func takeOver()
    /// The primary loses its secondary: held output released, runs alone.
    func continueAlone()
    /// Another host holds the pair: this VM must produce no more output.
    func fence(reason: String)
    /// A data connection the peer dialled for `channel` (checkpoint-*, nbd,
    /// proxyd-frames), not yet authenticated: the daemon that takes it does.
    /// The actuator owns `fd` from here.
    func inbound(channel: String, fd: Int32)
    /// Primary, failback: the last checkpoint, after which the VM stays
    /// paused and the secondary is asked to take the pair (STEP_HANDOVER).
    /// Returns once the secondary has loaded it, or the checkpoint failed
    /// (then the VM runs again).
    func handOver() -> Result<Void, SupervisionError>
    /// The old primary after a handover: the VM stopped and the disk
    /// released, so the new primary can make this host its secondary.
    func standDown()
    /// A handover that did not happen: the VM runs again and checkpoints go on.
    func resumeLockstep()
    /// A replication step message from the peer supervisord (a request on
    /// the secondary, an answer on the primary). Called on the link's
    /// receiving thread: long work goes elsewhere.
    func received(_ message: PeerMessage, on session: PeerSession)
}

/// Runs one host's side of a pair: the link to the peer supervisord, the
/// heartbeat, failure detection, the witness, and the state machine whose
/// actions it hands to the actuator.
///
/// Threads: the link thread connects (primary) or accepts (secondary), then
/// receives heartbeats; the heartbeat thread sends one every interval; the
/// watchdog thread declares the peer lost after `timeout` of silence. State
/// changes are serialised by one lock and persisted before they act.
public final class PairSupervisor: Sendable {
    private struct Shared {
        var machine: PairStateMachine
        var session: PeerSession?
        var lastHeard: ContinuousClock.Instant?
        var peerState = PeerHostState()
        var detail = ""
        var heartbeatSequence: UInt64 = 0
        var running = true
        /// Supervisor connections the acceptor took, for the link thread
        /// of a host that does not dial.
        var inboundSupervisor: [Int32] = []
        /// While handing over: when the primary stops waiting for the
        /// secondary's answer and resumes.
        var handoverDeadline: ContinuousClock.Instant?
        /// Failed syncs in a row, and when the link may be tried again: a
        /// sync that keeps failing (a misconfigured peer) is retried at
        /// growing intervals, not in a tight loop.
        var failedSyncs = 0
        var nextAttempt: ContinuousClock.Instant?
    }

    private let configuration: HostConfiguration
    private let key: PeerKey
    private let stateFile: String
    private let actuator: any PairActuator
    private let logger: Logger
    private let listener: Int32?
    private let shared: Mutex<Shared>
    /// Serialises transitions, so actions of one event finish before the
    /// next event is handled.
    private let transitions = Mutex(())

    public init(configuration: HostConfiguration, key: PeerKey, stateFile: String, actuator: any PairActuator,
                logger: Logger) throws(SupervisionError) {
        self.configuration = configuration
        self.key = key
        self.stateFile = stateFile
        self.actuator = actuator
        self.logger = logger
        let machine = try Self.restore(from: stateFile, configuration: configuration)
        self.shared = Mutex(Shared(machine: machine))
        // Both roles listen: after a failover the survivor is the primary
        // and a new secondary may dial it, whichever role each started in.
        do {
            listener = try TCPConnection.listen(on: configuration.pair.listen)
        } catch {
            throw .peer("cannot listen on \(configuration.pair.listen): \(error)")
        }
    }

    deinit {
        if let listener { close(listener) }
    }

    /// Starts the link, heartbeat and watchdog threads.
    public func start() {
        logger.info("pair supervision started", metadata: metadata(event: "pair_started"))
        spawnThread(name: "pair-accept") { [self] in acceptLoop() }
        spawnThread(name: "pair-link") { [self] in linkLoop() }
        spawnThread(name: "pair-heartbeat") { [self] in heartbeatLoop() }
        spawnThread(name: "pair-watchdog") { [self] in watchdogLoop() }
    }

    /// Stops supervising: no more heartbeats, the link closed. The peer then
    /// sees this host as lost, which is what stopping a host of a pair means.
    public func stop() {
        shared.withLock { $0.running = false }
        dropSession()
        if let listener { Glibc.shutdown(listener, Int32(SHUT_RDWR)) }
        logger.info("pair supervision stopped", metadata: metadata(event: "pair_stopped"))
    }

    private var running: Bool { shared.withLock { $0.running } }

    /// The pair as this host sees it, for `coloctl status`.
    public func report() -> ColoPairReport {
        shared.withLock { shared in
            var report = ColoPairReport()
            report.pair = configuration.pair.name
            report.hostRole = shared.machine.role.rawValue
            report.state = shared.machine.state.rawValue
            report.epoch = shared.machine.epoch
            report.peerConnected = shared.session != nil
            report.peerState = shared.peerState.state
            if let lastHeard = shared.lastHeard {
                report.peerHeardMsAgo = UInt64(max(0, (ContinuousClock.now - lastHeard).milliseconds))
            }
            report.detail = shared.detail
            return report
        }
    }

    public var state: PairState { shared.withLock { $0.machine.state } }
    public var role: PairRole { shared.withLock { $0.machine.role } }

    /// Operator commands; each is refused (returns false) where the state
    /// machine does not take it.
    public func operatorFailover() -> Bool { handle(.operatorFailover) }
    public func operatorResync() -> Bool { handle(.operatorResync) }
    public func operatorFailback() -> Bool { handle(.operatorFailback) }

    /// The secondary loaded the primary's last checkpoint before a
    /// handover (the actuator says so): claim the pair.
    public func handoverRequested() {
        handle(.handoverRequested)
    }

    /// The actuator found a local daemon dead: this host fences itself and
    /// resigns, so the peer takes over within its heartbeat timeout.
    public func localFailure(_ reason: String) {
        logger.critical("local failure: \(reason)", metadata: metadata(event: "local_failure")
            .merging(["reason": "\(reason)"]) { $1 })
        handle(.localFailure(reason))
    }

    // MARK: - Events and actions

    /// Feeds one event to the machine and carries out its actions in order.
    @discardableResult
    private func handle(_ event: PairStateMachine.Event) -> Bool {
        transitions.withLock { _ in
            let (before, actions) = shared.withLock { shared -> (PairState, [PairStateMachine.Action]) in
                let before = shared.machine.state
                return (before, shared.machine.handle(event))
            }
            guard !actions.isEmpty else {
                logger.debug("event ignored", metadata: ["event": "pair_event_ignored", "input": "\(event)"])
                return false
            }
            logger.notice("pair \(before.rawValue) -> \(state.rawValue)", metadata: metadata(event: "pair_transition")
                .merging(["from": "\(before.rawValue)", "input": "\(event)"]) { $1 })
            for action in actions { perform(action) }
            return true
        }
    }

    private func perform(_ action: PairStateMachine.Action) {
        switch action {
        case .persist:
            persist()
        case .startSync:
            let role = shared.withLock { $0.machine.role }
            spawnThread(name: "pair-sync") { [self] in
                // An operator's resync may come just before the new partner
                // has connected: give it a while to dial in.
                guard let session = waitForSession(timeout: .seconds(30)) else {
                    handle(.syncFailed("no connection to the peer"))
                    return
                }
                switch actuator.synchronize(as: role, session: session) {
                case .success:
                    shared.withLock { $0.failedSyncs = 0 }
                    handle(.syncCompleted)
                case .failure(let error):
                    let delay = shared.withLock { shared -> Duration in
                        shared.failedSyncs += 1
                        let delay = min(Duration.seconds(1) * (1 << min(shared.failedSyncs - 1, 5)), .seconds(30))
                        shared.nextAttempt = .now.advanced(by: delay)
                        return delay
                    }
                    logger.warning("sync failed; the link is tried again in \(delay)", metadata: metadata(event: "sync_retry")
                        .merging(["error": "\(error)", "retry_in_ms": "\(delay.milliseconds)"]) { $1 })
                    handle(.syncFailed("\(error)"))
                }
            }
        case .startLockstep:
            actuator.startLockstep(as: role)
        case .stopReplication:
            actuator.stopReplication()
            // A host that claims the pair keeps the link until the witness
            // has answered: closing it first would tell a live peer to claim
            // too, and the witness might grant the pair to the wrong host.
            if state != .claiming { dropSession() }
        case .claimFromWitness(let epoch, let reason):
            logger.warning("claiming the pair", metadata: metadata(event: "pair_claim")
                .merging(["claimed_epoch": "\(epoch)", "reason": "\(reason.rawValue)"]) { $1 })
            spawnThread(name: "pair-claim") { [self] in claim(epoch: epoch) }
        case .takeOver:
            logger.notice("taking over as primary", metadata: metadata(event: "failover"))
            // A peer still connected (an operator's failover) sees the link
            // close, claims, is refused by the witness and fences itself.
            dropSession()
            actuator.takeOver()
        case .continueAlone:
            logger.notice("continuing alone", metadata: metadata(event: "secondary_lost"))
            dropSession()
            actuator.continueAlone()
        case .fence(let reason):
            shared.withLock { $0.detail = reason }
            logger.critical("fenced: \(reason)", metadata: metadata(event: "fenced"))
            dropSession()
            actuator.fence(reason: reason)
        case .handOver:
            logger.notice("handing the pair over to the secondary", metadata: metadata(event: "handover_started"))
            let deadline = ContinuousClock.now.advanced(by: max(configuration.heartbeat.timeout * 4, .seconds(10)))
            shared.withLock { $0.handoverDeadline = deadline }
            // The checkpoint waits for the peer, whose answer is another
            // event: not under the transition lock.
            spawnThread(name: "pair-handover") { [self] in
                if case .failure(let error) = actuator.handOver() {
                    handle(.handoverDeclined("the last checkpoint failed: \(error)"))
                }
            }
        case .acceptHandover(let epoch):
            logger.notice("taking the pair over from the primary", metadata: metadata(event: "handover_accepted"))
            answerHandover(accepted: true, epoch: epoch, reason: "")
        case .declineHandover(let reason):
            logger.warning("handover declined: \(reason)", metadata: metadata(event: "handover_declined")
                .merging(["reason": "\(reason)"]) { $1 })
            answerHandover(accepted: false, epoch: 0, reason: reason)
        case .standDown:
            logger.notice("handed over: this host is the secondary now", metadata: metadata(event: "failback"))
            dropSession()
            actuator.standDown()
        case .resumeLockstep(let reason):
            shared.withLock { $0.detail = "failback declined: \(reason)" }
            logger.notice("handover off: lock-step goes on", metadata: metadata(event: "handover_cancelled")
                .merging(["reason": "\(reason)"]) { $1 })
            actuator.resumeLockstep()
        case .resign:
            stop()
        }
    }

    private func answerHandover(accepted: Bool, epoch: UInt64, reason: String) {
        guard let session = shared.withLock({ $0.session }) else { return }
        var handover = PeerHandover()
        handover.accepted = accepted
        handover.epoch = epoch
        handover.reason = reason
        var message = PeerMessage()
        message.handover = handover
        // Unsent, the primary learns of it from the link closing (take-over)
        // or from its own timeout.
        try? session.send(message, timeout: .seconds(1))
    }

    /// Asks the witness; without a witness configured, only the peer's
    /// silence decides (DESIGN.md: then a cut link can make two primaries,
    /// and the operator was told so by the configuration's lack of one).
    private func claim(epoch: UInt64) {
        guard let witness = configuration.pair.witness else {
            handle(.witnessGranted(epoch: epoch))
            return
        }
        var claim = WitnessClaim()
        claim.pair = configuration.pair.name
        claim.host = configuration.pair.host
        claim.epoch = epoch
        do {
            let verdict = try WitnessClient.claim(claim, at: witness, key: key,
                                                  timeout: max(configuration.heartbeat.timeout, .seconds(1)))
            if verdict.granted {
                handle(.witnessGranted(epoch: epoch))
            } else {
                handle(.witnessRefused("the witness gave epoch \(verdict.epoch) to \(verdict.holder): \(verdict.reason)"))
            }
        } catch {
            handle(.witnessRefused("the witness could not be asked: \(error)"))
        }
    }

    // MARK: - Threads

    private func linkLoop() {
        while running {
            let state = shared.withLock { $0.machine.state }
            if state == .fenced { return }
            if let next = shared.withLock({ $0.nextAttempt }), ContinuousClock.now < next {
                usleep(100_000)
                continue
            }
            guard let session = connect(state: state) else {
                usleep(200_000)
                continue
            }
            let peerEpoch = session.peer.epoch
            let accepted = shared.withLock { shared -> Bool in
                guard shared.running else { return false }
                shared.session = session
                shared.lastHeard = .now
                shared.peerState = session.peer
                return true
            }
            guard accepted else {
                session.shutdown()
                return
            }
            logger.info("peer connected", metadata: metadata(event: "peer_connected")
                .merging(["peer_host": "\(session.peer.host)", "peer_state": "\(session.peer.state)"]) { $1 })
            // (A resync waits for exactly such a peer: a fresh one.)
            if session.peer.state == PairState.waiting.rawValue && [.lockstep, .syncing].contains(state) {
                // The peer restarted and lost its replica while we counted on it.
                logger.error("peer came back without its replica", metadata: metadata(event: "peer_lost"))
                handle(.peerLost)
            } else {
                handle(.peerConnected(peerEpoch: peerEpoch))
            }
            receive(on: session)
            dropSession(session)
        }
    }

    /// The primary dials (alone after a failover too: that is how a new
    /// partner is found); the secondary accepts.
    private func connect(state: PairState) -> PeerSession? {
        let local = hostState()
        let dial = local.role == PairRole.primary.rawValue
        do {
            let fd: Int32
            if dial {
                fd = try TCPConnection.connect(to: configuration.pair.peer, timeout: .seconds(1))
                do {
                    try ChannelRoute.announce(PeerSession.channel, on: fd)
                } catch {
                    close(fd)
                    throw error
                }
            } else {
                guard let accepted = takeInboundSupervisor(waiting: .milliseconds(500)) else { return nil }
                fd = accepted
            }
            return try PeerSession.establish(fd: fd, role: dial ? .initiator : .responder,
                                             pair: configuration.pair.name, local: local, key: key,
                                             timeout: .seconds(2))
        } catch {
            if case FrameError.timedOut = error { return nil }
            logger.debug("no peer session", metadata: ["event": "peer_connect_failed", "error": "\(error)"])
            return nil
        }
    }

    private func receive(on session: PeerSession) {
        while true {
            let message: PeerMessage?
            do {
                message = try session.receive(timeout: nil)
            } catch {
                logger.warning("peer link failed", metadata: metadata(event: "peer_link_failed")
                    .merging(["error": "\(error)"]) { $1 })
                linkEnded(session)
                return
            }
            guard let message else {
                logger.warning("peer closed the link", metadata: metadata(event: "peer_link_closed"))
                linkEnded(session)
                return
            }
            switch message.body {
            case .heartbeat(let heartbeat):
                shared.withLock { shared in
                    guard shared.session === session else { return }
                    shared.lastHeard = .now
                    shared.peerState = heartbeat.host
                }
            case .stepRequest, .stepDone:
                // Any message is proof of life too.
                shared.withLock { shared in
                    if shared.session === session { shared.lastHeard = .now }
                }
                actuator.received(message, on: session)
            case .handover(let answer):
                shared.withLock { shared in
                    if shared.session === session { shared.lastHeard = .now }
                }
                handle(answer.accepted ? .handoverAccepted(epoch: answer.epoch) : .handoverDeclined(answer.reason))
            case .hello, .none:
                logger.warning("unexpected message from the peer", metadata: metadata(event: "peer_protocol_error"))
            }
        }
    }

    /// Accepts every connection the peer dials to our one port and routes
    /// it by the channel its route frame names (PeerLink's ChannelRoute): supervisor links to the link
    /// thread, data channels to the actuator. Each route frame is read on
    /// a thread of its own, so a silent one cannot hold up the others.
    private func acceptLoop() {
        guard let listener else { return }
        while running {
            let fd: Int32
            do {
                fd = try TCPConnection.accept(from: listener, timeout: .milliseconds(500))
            } catch {
                if case .timedOut = error { continue }
                if !running { return }
                usleep(100_000)
                continue
            }
            spawnThread(name: "pair-route") { [self] in route(fd) }
        }
    }

    private func route(_ fd: Int32) {
        let channel: String
        do {
            channel = try ChannelRoute.read(from: fd)
        } catch {
            logger.warning("inbound connection refused: \(error)", metadata: ["event": "inbound_refused", "error": "\(error)"])
            close(fd)
            return
        }
        if channel == PeerSession.channel {
            let queued = shared.withLock { shared -> Bool in
                // The primary dials; it takes no supervisor link from anyone.
                guard shared.running, shared.machine.role == .secondary else { return false }
                shared.inboundSupervisor.append(fd)
                return true
            }
            if !queued {
                logger.warning("supervisor connection refused: this host dials its peer",
                               metadata: ["event": "inbound_refused", "channel": "\(channel)"])
                close(fd)
            }
        } else {
            logger.debug("inbound \(channel) connection", metadata: ["event": "inbound_channel", "channel": "\(channel)"])
            actuator.inbound(channel: channel, fd: fd)
        }
    }

    private func waitForSession(timeout: Duration) -> PeerSession? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            if let session = shared.withLock({ $0.session }) { return session }
            guard ContinuousClock.now < deadline, running else { return nil }
            usleep(50_000)
        }
    }

    private func takeInboundSupervisor(waiting timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            let fd = shared.withLock { shared -> Int32? in
                shared.inboundSupervisor.isEmpty ? nil : shared.inboundSupervisor.removeFirst()
            }
            if let fd { return fd }
            usleep(20_000)
        }
        return nil
    }

    /// The peer's kernel closed or reset the link: its supervisord is gone
    /// (the host died, or it resigned). That is known now, without waiting
    /// out the heartbeat timeout; the witness still decides who holds the
    /// pair. A link that goes silent instead is the watchdog's business.
    private func linkEnded(_ session: PeerSession) {
        let current = shared.withLock { $0.session === session && $0.running }
        guard current, [.lockstep, .syncing, .resyncing, .handingOver].contains(state) else { return }
        logger.error("the peer closed the link", metadata: metadata(event: "peer_lost"))
        handle(.peerLost)
    }

    private func heartbeatLoop() {
        let interval = configuration.heartbeat.interval
        while running {
            usleep(UInt32(clamping: interval.microseconds))
            let (session, sequence) = shared.withLock { shared -> (PeerSession?, UInt64) in
                shared.heartbeatSequence += 1
                return (shared.session, shared.heartbeatSequence)
            }
            guard let session else { continue }
            var heartbeat = PeerHeartbeat()
            heartbeat.sequence = sequence
            heartbeat.host = hostState()
            var message = PeerMessage()
            message.heartbeat = heartbeat
            // A failed send is the receiver's and the watchdog's business.
            try? session.send(message, timeout: interval)
        }
    }

    /// Declares the peer lost after `timeout` without a heartbeat, in the
    /// states where the pair depends on it.
    private func watchdogLoop() {
        let timeout = configuration.heartbeat.timeout
        let tick = max(configuration.heartbeat.interval / 4, .milliseconds(5))
        while running {
            usleep(UInt32(clamping: tick.microseconds))
            let handoverOverdue = shared.withLock { shared -> Bool in
                guard shared.machine.state == .handingOver, let deadline = shared.handoverDeadline else { return false }
                return ContinuousClock.now > deadline
            }
            if handoverOverdue {
                handle(.handoverDeclined("the secondary did not answer the handover in time"))
            }
            let silent = shared.withLock { shared -> Bool in
                // A sync still waiting for its partner to dial in has its own
                // timeout; silence counts once a link to that partner exists.
                guard [.lockstep, .syncing, .resyncing, .handingOver].contains(shared.machine.state),
                      shared.session != nil || shared.machine.state == .lockstep,
                      let lastHeard = shared.lastHeard else { return false }
                return ContinuousClock.now - lastHeard > timeout
            }
            if silent {
                logger.error("peer silent for \(timeout)", metadata: metadata(event: "peer_lost"))
                handle(.peerLost)
            }
        }
    }

    private func dropSession(_ expected: PeerSession? = nil) {
        let session = shared.withLock { shared -> PeerSession? in
            guard expected == nil || shared.session === expected else { return nil }
            // lastHeard stays: a closed link is silence, and the watchdog
            // counts it from the last heartbeat, as for a quiet one.
            defer { shared.session = nil }
            return shared.session
        }
        session?.shutdown()
    }

    private func hostState() -> PeerHostState {
        shared.withLock { shared in
            var host = PeerHostState()
            host.host = configuration.pair.host
            host.role = shared.machine.role.rawValue
            host.state = shared.machine.state.rawValue
            host.epoch = shared.machine.epoch
            return host
        }
    }

    private func metadata(event: String) -> Logger.Metadata {
        let (role, state, epoch) = shared.withLock { ($0.machine.role, $0.machine.state, $0.machine.epoch) }
        return ["event": "\(event)", "role": "\(role.rawValue)", "pair_state": "\(state.rawValue)",
                "epoch": "\(epoch)", "pair": "\(configuration.pair.name)"]
    }

    // MARK: - Persistence

    /// `role=primary state=alone epoch=3`: the role and epoch always survive
    /// a restart; so do the states that outlive the peer (alone, fenced).
    private func persist() {
        let line = shared.withLock { shared in
            "role=\(shared.machine.role.rawValue) state=\(shared.machine.state.rawValue) epoch=\(shared.machine.epoch)\n"
        }
        do {
            try DurableFile.write(line, to: stateFile)
        } catch {
            logger.error("pair state not persisted: \(error)", metadata: ["event": "persist_failed"])
        }
    }

    static func restore(from stateFile: String, configuration: HostConfiguration)
        throws(SupervisionError) -> PairStateMachine {
        let initialRole: PairRole = configuration.pair.role == .primary ? .primary : .secondary
        let text: String?
        do { text = try DurableFile.read(stateFile, maxBytes: 4096) } catch { throw .state(error.description) }
        guard let text else { return PairStateMachine(role: initialRole) }
        var fields: [String: String] = [:]
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let parts = word.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw .state("\(stateFile): malformed '\(word)'") }
            fields[String(parts[0])] = String(parts[1])
        }
        guard let role = fields["role"].flatMap(PairRole.init(rawValue:)),
              let state = fields["state"].flatMap(PairState.init(rawValue:)),
              let epoch = fields["epoch"].flatMap(UInt64.init) else {
            throw .state("\(stateFile): expected 'role=... state=... epoch=...'")
        }
        return PairStateMachine(restoring: role, state: state, epoch: epoch)
    }
}

