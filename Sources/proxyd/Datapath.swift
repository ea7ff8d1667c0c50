import ColoProtocol
internal import CSupport
import FrameLink
import ControlSocket
import Glibc
import Logging
import PacketComparison
import Packets
import PeerAuthentication
import SequenceRewriter
import Synchronization

/// Everything the datapath is started with (from `ProxyAttach`).
struct DatapathConfiguration {
    var role: ColoProxyRole
    var external: Int32?
    var guest: Int32
    var peer: Int32?
    var events: Int32?
    var settings: ComparisonSettings
    var guestMAC: MACAddress?
    var guestAddresses: [IPAddress]
}

/// The thread that moves every frame. One loop, one thread: the comparison
/// engine, the rewriter and the fds are touched by nobody else, and control
/// requests reach it through the `Mailbox`.
///
///     primary:      external -> guest, and -> peer (mirror)
///                   guest -> engine (held);  peer -> engine (secondary's output)
///                   engine -> external (released), -> events (checkpoint requests)
///     secondary:    peer -> rewriter (ack) -> guest
///                   guest -> rewriter (seq) -> peer (held once the link is lost)
///     take-over:    external backlog -> dropped; held -> external;
///                   duplicate ACKs -> guest (fast retransmit)
///     pass-through: external <-> guest (through the rewriter on a former secondary)
///
/// A survivor attached again as primary (resync) keeps its rewriter: its
/// clients' connections from before the failover stay in their sequence
/// space outside, while the guest, the comparison and the new secondary
/// (a copy of this guest) all work in the guest's space.
final class Datapath: @unchecked Sendable {
    private var role: ColoProxyRole
    private let external: FramePort?
    private var guest: FramePort?
    private let peerFd: Int32?
    private var link: PeerFrameLink?
    private let events: Int32?
    private let engine: ComparisonEngine
    /// The secondary's rewriter; kept in the path after a failover, and
    /// handed on to the next datapath when the survivor is attached anew.
    private(set) var rewriter: SequenceRewriter?
    /// The secondary's record of its guest's connections, for the take-over.
    private var prompter: RetransmissionPrompter?
    /// What the secondary guest sent after the peer link was lost: released
    /// if this host takes over (the guest's output from then on is the
    /// pair's), dropped otherwise.
    private var outputSinceLinkLoss: [[UInt8]] = []
    private var outputSinceLinkLossBytes = 0
    private var outputSinceLinkLossDropped = 0
    /// Bytes of guest output kept after the link was lost; beyond, frames
    /// are dropped (TCP resends them).
    private static let outputSinceLinkLossLimit = 4 << 20
    private let guestMAC: MACAddress?
    private let guestAddresses: [IPAddress]
    private var capture: Int32?
    private let key: PeerKey?
    let mailbox = Mailbox()
    private let logger: Logger
    let state = Mutex<String>("authenticating")
    private var inbound: UInt64 = 0
    private var outbound: UInt64 = 0
    private var announcements: UInt64 = 0
    private var running = true
    /// Signalled once the thread has closed its fds and touches nothing more.
    let finished: WakeupPipe

    /// `rewriter`: the previous datapath's, for a survivor attached anew
    /// (a secondary always starts with its own, empty one).
    init(_ configuration: DatapathConfiguration, rewriter: SequenceRewriter?, finished: WakeupPipe,
         key: PeerKey?, logger: Logger) {
        role = configuration.role
        external = configuration.external.map { FramePort(fd: $0, name: "external") }
        guest = FramePort(fd: configuration.guest, name: "guest")
        peerFd = configuration.peer
        events = configuration.events
        engine = ComparisonEngine(settings: configuration.settings)
        self.rewriter = configuration.role == .secondary ? SequenceRewriter() : rewriter
        prompter = configuration.role == .secondary ? RetransmissionPrompter() : nil
        self.finished = finished
        guestMAC = configuration.guestMAC
        guestAddresses = configuration.guestAddresses
        self.key = key
        self.logger = logger
    }

    func run() {
        if let peerFd, let key {
            do {
                link = try PeerFrameLink(fd: peerFd, role: role == .primary ? .initiator : .responder, key: key)
                logger.info("peer link authenticated", metadata: ["event": "peer_link_up", "role": "\(role)"])
            } catch {
                close(peerFd)
                linkLost("authentication: \(error)")
            }
        }
        setState()
        logger.info("datapath running", metadata: ["event": "datapath_running", "role": "\(role)"])
        while running { turn() }
        mailbox.close()
        link?.close()
        external?.close()
        guest?.close()
        if let events { close(events) }
        if let capture { close(capture) }
        logger.info("datapath ended", metadata: ["event": "datapath_ended", "role": "\(role)"])
        finished.signal()
    }

    // MARK: - The loop

    private func turn() {
        var fds = [pollfd(fd: mailbox.wakeFd, events: Int16(POLLIN), revents: 0)]
        var guestIndex = -1, linkIndex = -1, externalIndex = -1
        if let guest, !(role == .primary && engine.isFull) {
            guestIndex = fds.count
            fds.append(pollfd(fd: guest.fd, events: Int16(POLLIN), revents: 0))
        }
        if let link {
            linkIndex = fds.count
            fds.append(pollfd(fd: link.fd, events: Int16(POLLIN), revents: 0))
        }
        if let external, role != .secondary {
            externalIndex = fds.count
            fds.append(pollfd(fd: external.fd, events: Int16(POLLIN), revents: 0))
        }
        var timeout: Int64 = -1
        if role == .primary, let deadline = engine.nextDeadline {
            let now = monotonicNanoseconds()
            timeout = deadline > now ? Int64(deadline - now) : 0
        }
        let result = colo_poll_ns(&fds, UInt(fds.count), timeout)
        if result < 0 && errno != EINTR {
            logger.critical("ppoll failed: \(String(cString: strerror(errno)))", metadata: ["event": "datapath_failed"])
            stop()
            return
        }
        let ready = { (index: Int) in index >= 0 && fds[index].revents != 0 }
        if ready(guestIndex) { readGuest() }
        if ready(linkIndex) { readLink() }
        if ready(externalIndex) { readExternal() }
        if fds[0].revents != 0 { mailbox.serve(execute) }
        if role == .primary {
            engine.advance(to: monotonicNanoseconds())
            drainEngine()
        }
        // The link first: the secondary's round trip is the longer path
        // a held answer waits for.
        flushLink()
        flushPorts()
    }

    private func readGuest() {
        guard let port = guest else { return }
        let now = monotonicNanoseconds()
        let wallClock = role == .secondary ? wallClockNanoseconds() : 0
        let outcome = port.read { bytes in
            switch role {
            case .primary:
                engine.primaryFrame(Array(bytes), at: now)
            case .secondary:
                var frame = Array(bytes)
                rewriter?.guestOutput(&frame, at: now)
                prompter?.guestSegment(frame, at: now)
                if let link {
                    link.queue(frame, timestamp: wallClock)
                } else {
                    keepForTakeover(frame)
                }
            default:
                var frame = Array(bytes)
                rewriter?.guestOutput(&frame, at: now)
                queueExternal(frame)
            }
        }
        if case let .closed(reason) = outcome {
            logger.error("guest side closed: \(reason)", metadata: ["event": "guest_closed"])
            dropGuest()
        }
    }

    private func readExternal() {
        guard let port = external else { return }
        let now = monotonicNanoseconds()
        let wallClock = role == .primary ? wallClockNanoseconds() : 0
        let outcome = port.read { bytes in
            inbound += 1
            guard let rewriter else {
                if role == .primary { link?.queue(bytes, timestamp: wallClock) }
                guest?.queue(bytes)
                return
            }
            var frame = Array(bytes)
            rewriter.guestInput(&frame, at: now)
            if role == .primary { link?.queue(frame, timestamp: wallClock) }
            guest?.queue(frame)
        }
        if case let .closed(reason) = outcome {
            logger.error("external side failed: \(reason)", metadata: ["event": "external_closed"])
            stop()
        }
    }

    private func readLink() {
        guard let link else { return }
        let now = monotonicNanoseconds()
        do {
            try link.receive { record in
                switch (role, record) {
                case (.primary, let .frame(frame, _)):
                    engine.secondaryFrame(frame, at: now)
                case (.primary, .checkpointMark):
                    engine.secondaryCheckpointMark()
                case (.secondary, .frame(var frame, _)):
                    inbound += 1
                    prompter?.peerSegment(frame, at: now)
                    rewriter?.guestInput(&frame, at: now)
                    guest?.queue(frame)
                default:
                    break
                }
            }
        } catch {
            dropLink(error.description)
        }
    }

    private func drainEngine() {
        engine.drainOutputs { output in
            switch output {
            case var .release(frame):
                rewriter?.guestOutput(&frame, at: monotonicNanoseconds())
                queueExternal(frame)
            case let .checkpoint(request):
                sendCheckpointRequest(request)
            case let .mismatch(primary, secondary):
                guard let capture else { return }
                var records: [UInt8] = []
                let now = wallClockNanoseconds()
                for frame in primary + (secondary.map { [$0] } ?? []) {
                    FrameStream.appendRecord(frame, timestamp: now, to: &records)
                }
                writeAll(capture, records)
            }
        }
    }

    private func queueExternal(_ frame: [UInt8]) {
        guard let external else { return }
        outbound += 1
        external.queue(frame)
    }

    /// Writes what the turn queued for the guest and the external side.
    private func flushPorts() {
        if let port = guest, !port.flush() {
            logger.error("guest side write failed", metadata: ["event": "guest_closed"])
            dropGuest()
        }
        if let external, !external.flush() {
            logger.error("external side write failed", metadata: ["event": "external_closed"])
            stop()
        }
    }

    private func dropGuest() {
        guest?.close()
        guest = nil
        setState()
    }

    private func flushLink() {
        guard let link else { return }
        do {
            try link.flush()
        } catch {
            dropLink(error.description)
        }
    }

    private func dropLink(_ reason: String) {
        link?.close()
        link = nil
        linkLost(reason)
    }

    private func linkLost(_ reason: String) {
        logger.error("peer link lost: \(reason)", metadata: ["event": "peer_link_lost", "reason": "\(reason)"])
        var event = ColoProxyEvent()
        event.linkLost.reason = reason
        sendEvent(event)
        setState()
    }

    private func sendCheckpointRequest(_ request: CheckpointRequest) {
        logger.info("checkpoint requested: \(request.reason) \(request.flow)", metadata: [
            "event": "checkpoint_requested", "reason": "\(request.reason)", "protocol": "\(request.flowProtocol)",
        ])
        var event = ColoProxyEvent()
        event.checkpointRequest.reason = switch request.reason {
        case .mismatch: .mismatch
        case .expired: .expired
        case .queueFull: .queueFull
        }
        event.checkpointRequest.protocol = ColoProxyProtocol(request.flowProtocol)
        event.checkpointRequest.connection = request.flow
        event.checkpointRequest.monotonicNs = request.time
        sendEvent(event)
    }

    private func sendEvent(_ event: ColoProxyEvent) {
        guard let events, let bytes: [UInt8] = try? event.serializedBytes() else { return }
        let sent = bytes.withUnsafeBytes { send(events, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
        if sent < 0 {
            logger.error("event not delivered: \(String(cString: strerror(errno)))", metadata: ["event": "event_lost"])
        }
    }

    // MARK: - Commands

    private func execute(_ command: DatapathCommand) -> Mailbox.Answer {
        guard running else {
            return .failure(.init(code: .failedPrecondition, message: "the datapath has stopped"))
        }
        let now = monotonicNanoseconds()
        switch command {
        case .checkpointDone:
            switch role {
            case .primary:
                engine.checkpointDone(at: now)
                drainEngine()
            case .secondary:
                rewriter?.checkpointDone()
                prompter?.checkpointDone()
                link?.queueCheckpointMark(timestamp: wallClockNanoseconds())
                flushLink()
            default:
                break
            }
            logger.info("checkpoint done", metadata: ["event": "checkpoint_done", "role": "\(role)"])
        case .passThrough:
            guard external != nil else {
                return .failure(.init(code: .failedPrecondition, message: "no external interface was attached"))
            }
            let former = role
            if role == .primary {
                engine.releaseAll(at: now)
                drainEngine()
            }
            link?.close()
            link = nil
            role = .passThrough
            if former == .secondary { takeOver(at: now) }
            setState()
            logger.notice("pass-through", metadata: ["event": "pass_through", "former_role": "\(former)"])
        case let .replaceGuest(fd):
            guest?.close()
            guest = FramePort(fd: fd, name: "guest")
            setState()
            logger.notice("guest frame socket replaced", metadata: ["event": "guest_replaced", "role": "\(role)"])
        case let .capture(fd):
            if let capture { close(capture) }
            capture = fd
            if let fd { writeAll(fd, FrameStream.header()) }
            logger.info(fd == nil ? "capture stopped" : "capturing mismatches", metadata: ["event": "capture"])
        case .counters:
            break
        case .detach:
            guard role == .passThrough || link == nil else {
                return .failure(.init(code: .failedPrecondition, message:
                    "proxyd is attached already as \(role) with a live peer link: attach again only in pass-through or after the link failed"))
            }
            if role == .primary {
                // Link lost: what waited for the secondary's answer goes out.
                engine.releaseAll(at: now)
                drainEngine()
            }
            running = false
            state.withLock { $0 = "stopped" }
            logger.notice("detaching for a new attach", metadata: ["event": "detaching", "role": "\(role)"])
        }
        return .success(counters())
    }

    private func keepForTakeover(_ frame: [UInt8]) {
        guard outputSinceLinkLossBytes + frame.count <= Self.outputSinceLinkLossLimit else {
            outputSinceLinkLossDropped += 1
            return
        }
        outputSinceLinkLoss.append(frame)
        outputSinceLinkLossBytes += frame.count
    }

    /// A former secondary now serves alone: its guest's address moves here,
    /// what the guest sent since the link was lost goes out, and the guest
    /// is prompted to resend at once what the dead primary held back
    /// (instead of after its retransmission timeout).
    private func takeOver(at now: UInt64) {
        // What waited on the external side while this host was secondary
        // (broadcasts, flooded frames, queued for as long as it ran) the
        // guest had through the primary's mirror: stale now.
        let stale = external?.discardWaiting() ?? 0
        announce()
        let released = outputSinceLinkLoss.count
        for frame in outputSinceLinkLoss { queueExternal(frame) }
        outputSinceLinkLoss = []
        outputSinceLinkLossBytes = 0
        let prompts = prompter?.duplicateAcknowledgments() ?? []
        for var frame in prompts {
            rewriter?.guestInput(&frame, at: now)
            guest?.queue(frame)
        }
        prompter = nil
        let prompted = prompts.count / RetransmissionPrompter.duplicates
        logger.notice("took over: \(released) frames held since the link was lost sent, \(prompted) connections prompted", metadata: [
            "event": "takeover_output", "released_frames": "\(released)",
            "dropped_frames": "\(outputSinceLinkLossDropped)", "stale_frames_dropped": "\(stale)",
            "prompted_connections": "\(prompted)",
        ])
    }

    private func announce() {
        guard let guestMAC else { return }
        for address in guestAddresses {
            queueExternal(address.isIPv4 ? AddressAnnouncement.gratuitousARP(mac: guestMAC, address: address)
                          : AddressAnnouncement.unsolicitedNeighborAdvertisement(mac: guestMAC, address: address))
            announcements += 1
        }
        logger.notice("announced \(guestAddresses.count) addresses", metadata: ["event": "addresses_announced"])
    }

    private func counters() -> ColoProxyCounters {
        let engineCounters = engine.counters
        var reply = ColoProxyCounters()
        reply.role = role
        reply.state = state.withLock { $0 }
        reply.protocols = FlowProtocol.allCases.map { flowProtocol in
            var entry = ColoProxyProtocolCounters()
            entry.protocol = ColoProxyProtocol(flowProtocol)
            entry.matched = engineCounters.matched[flowProtocol.rawValue]
            entry.mismatched = engineCounters.mismatched[flowProtocol.rawValue]
            entry.expired = engineCounters.expired[flowProtocol.rawValue]
            return entry
        }
        reply.heldFrames = UInt64(engine.heldFrames)
        reply.secondaryQueueDepth = UInt64(engine.secondaryDepth)
        reply.releasedByCheckpoint = engineCounters.releasedByCheckpoint
        reply.checkpointsRequested = engineCounters.checkpointsRequested
        reply.checkpointsDone = engineCounters.checkpointsDone
        reply.secondaryDiscarded = engineCounters.secondaryDiscarded
        reply.malformedFrames = engineCounters.malformed
        reply.heldTimeHistogramUs = engineCounters.heldTimeHistogram
        reply.inboundFrames = inbound
        reply.outboundFrames = outbound
        reply.rewrittenFrames = rewriter?.rewrittenFrames ?? 0
        reply.announcementsSent = announcements
        reply.capturing = capture != nil
        reply.undeliverableFrames = (external?.undeliverable ?? 0) + (guest?.undeliverable ?? 0)
        reply.oversizedFrames = (external?.oversized ?? 0) + (guest?.oversized ?? 0)
        return reply
    }

    private func setState() {
        let word: String
        if guest == nil {
            word = "guest-closed"
        } else if role != .passThrough && link == nil {
            word = "link-failed"
        } else {
            word = role == .passThrough ? "pass-through" : "running"
        }
        state.withLock { $0 = word }
    }

    private func stop() {
        running = false
        state.withLock { $0 = "stopped" }
        mailbox.close()
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else {
                logger.error("capture write failed", metadata: ["event": "capture_failed"])
                return
            }
            offset += written
        }
    }
}

extension ColoProxyProtocol {
    init(_ flowProtocol: FlowProtocol) {
        self = switch flowProtocol {
        case .tcp: .tcp
        case .udp: .udp
        case .icmp: .icmp
        case .arp: .arp
        case .other: .other
        }
    }
}
