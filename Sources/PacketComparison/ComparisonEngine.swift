import Packets

/// The COLO comparison as a deterministic state machine: frames from the
/// primary guest and from the secondary guest go in, each with the time it
/// was seen; primary frames come out once the secondary agrees, and
/// checkpoint requests come out when the two diverge. No sockets, threads or
/// clocks inside: the daemon drives it from its I/O loop, tests and the
/// fuzzer from recorded or generated input.
///
/// - TCP: ``TCPStream`` (sequence ranges, segmentation, retransmissions,
///   out-of-order segments, ACK gating, SYN/FIN/RST agreement).
/// - Everything else: ``DatagramFlow`` (in order, by IP payload for UDP and
///   ICMP, whole for ARP and other EtherTypes; frames that do not parse are
///   compared byte for byte).
/// - IP fragments are reassembled on each side first.
///
/// Deadlines are exact per frame: every primary frame is due
/// `compareTimeout` after its arrival, and ``nextDeadline`` tells the driver
/// when to call ``advance(to:)``. Frames are never dropped: a full queue
/// asks for a checkpoint, and the driver stops reading the primary guest
/// while ``isFull``. One checkpoint request is outstanding at a time;
/// ``checkpointDone(at:)`` releases every held primary frame and forgets the
/// secondary's queue.
///
/// The secondary's frames sent before a checkpoint may still be on the wire
/// when it completes: the secondary host marks its stream at each
/// checkpoint (``secondaryCheckpointMark()``), and secondary frames are
/// discarded until the mark of the latest checkpoint has arrived.
public final class ComparisonEngine {
    public let settings: ComparisonSettings
    public private(set) var counters = ComparisonCounters()
    /// Primary frames held now.
    public private(set) var heldFrames = 0
    public private(set) var checkpointPending = false
    private var outputs: [ComparisonOutput] = []
    private var deadlines = FIFO<HeldUnit>()
    /// Units before this offset in `deadlines` have been looked at for expiry.
    private var expiryCursor = 0
    private var streams: [FlowKey: TCPStream] = [:]
    private var datagrams: [FlowKey: DatagramFlow] = [:]
    private var primaryFragments = FragmentReassembler<HeldUnit>()
    private var secondaryFragments = FragmentReassembler<[[UInt8]]>()
    private var marksExpected: UInt64 = 0
    private var marksReceived: UInt64 = 0
    private var lastSweep: UInt64 = 0

    public init(settings: ComparisonSettings) {
        self.settings = settings
    }

    /// At or beyond the queue limit: stop reading the primary guest until
    /// frames are released.
    public var isFull: Bool { heldFrames >= settings.queueLimit }

    /// Secondary frames buffered, waiting for their primary counterpart.
    public var secondaryDepth: Int { secondaryBuffered + secondaryFragments.count }
    /// The sum of the flows' secondary depths, kept up to date as each
    /// frame changes one flow (summing every flow per frame would cost
    /// O(flows)).
    private var secondaryBuffered = 0

    public var flowCount: Int { streams.count + datagrams.count }

    /// When ``advance(to:)`` must next be called: the earliest deadline of a
    /// held primary frame not yet expired.
    public var nextDeadline: UInt64? {
        while expiryCursor < deadlines.count, deadlines[expiryCursor].released { expiryCursor += 1 }
        return expiryCursor < deadlines.count ? deadlines[expiryCursor].deadline : nil
    }

    /// Everything produced since the last call, in order.
    public func takeOutputs() -> [ComparisonOutput] {
        defer { outputs.removeAll(keepingCapacity: true) }
        return outputs
    }

    /// Hands each output produced since the last call to `body`, in order.
    public func drainOutputs(_ body: (ComparisonOutput) -> Void) {
        for output in outputs { body(output) }
        outputs.removeAll(keepingCapacity: true)
    }

    // MARK: - Inputs

    /// A frame the primary guest sent. It is held until the secondary agrees.
    public func primaryFrame(_ frame: [UInt8], at now: UInt64) {
        let (classified, malformed) = FlowClassifier.classify(frame)
        if malformed { counters.malformed += 1 }
        heldFrames += 1
        switch classified {
        case let .fragment(key, piece, isIPv6):
            let placeholder = FlowKey(flowProtocol: .other, etherType: isIPv6 ? EtherType.ipv6 : EtherType.ipv4,
                                      ipProtocol: key.ipProtocol, source: key.source, destination: key.destination,
                                      sourcePort: 0, destinationPort: 0)
            let outcome = primaryFragments.add(key, piece, isIPv6: isIPv6, at: now,
                                               makeTag: { hold([], flow: placeholder, at: now) },
                                               update: { $0.frames.append(frame) })
            switch outcome {
            case .incomplete:
                break
            case let .complete(unit, classified, malformed):
                if malformed { counters.malformed += 1 }
                dispatchPrimary(unit, classified, at: now)
            case let .invalid(unit):
                counters.malformed += 1
                dispatchPrimary(unit, .datagram(.malformed, content: Array(unit.frames.joined())[...]), at: now)
            }
        case let .tcp(key, _), let .datagram(key, _):
            dispatchPrimary(hold([frame], flow: key, at: now), classified, at: now)
        }
        if isFull { requestCheckpoint(.queueFull, flow: .malformed, at: now) }
    }

    /// A frame the secondary guest sent (rewritten into the primary's TCP
    /// sequence space by the secondary host).
    public func secondaryFrame(_ frame: [UInt8], at now: UInt64) {
        guard marksReceived >= marksExpected else {
            counters.secondaryDiscarded += 1
            return
        }
        if checkpointPending && secondaryDepth >= 2 * settings.queueLimit {
            // The checkpoint under way drops the secondary's queue anyway.
            counters.secondaryDiscarded += 1
            return
        }
        let (classified, malformed) = FlowClassifier.classify(frame)
        if malformed { counters.malformed += 1 }
        switch classified {
        case let .fragment(key, piece, isIPv6):
            if secondaryFragments.count >= FragmentReassembler<[[UInt8]]>.maximumAssemblies {
                counters.secondaryDiscarded += UInt64(secondaryFragments.removeAll().count)
            }
            switch secondaryFragments.add(key, piece, isIPv6: isIPv6, at: now, makeTag: { [] },
                                          update: { $0.append(frame) }) {
            case .incomplete:
                break
            case let .complete(frames, classified, _):
                dispatchSecondary(frames.last ?? frame, classified, at: now)
            case let .invalid(frames):
                dispatchSecondary(frame, .datagram(.malformed, content: Array(frames.joined())[...]), at: now)
            }
        default:
            dispatchSecondary(frame, classified, at: now)
        }
        if secondaryDepth >= settings.queueLimit { requestCheckpoint(.queueFull, flow: .malformed, at: now) }
    }

    /// The secondary host's mark of a finished checkpoint, in its stream.
    public func secondaryCheckpointMark() {
        marksReceived += 1
    }

    /// Expires every held primary frame due at or before `now`.
    public func advance(to now: UInt64) {
        while let deadline = nextDeadline, deadline <= now {
            let unit = deadlines[expiryCursor]
            unit.expired = true
            counters.expired[unit.flow.flowProtocol.rawValue] += UInt64(unit.frames.count)
            expiryCursor += 1
            requestCheckpoint(.expired, flow: unit.flow, at: now)
        }
        if now &- lastSweep >= settings.idleFlowTimeout / 4 {
            lastSweep = now
            forgetIdleFlows(at: now)
        }
    }

    /// The checkpoint finished: both guests are equal again. Every held
    /// primary frame is released (in arrival order), the secondary's queue
    /// forgotten, and secondary frames ignored until its mark arrives.
    public func checkpointDone(at now: UInt64) {
        releaseEverything(at: now)
        counters.checkpointsDone += 1
        checkpointPending = false
        marksExpected += 1
    }

    /// Releases every held frame and stops comparing what was pending: for a
    /// switch to pass-through (the secondary is gone).
    public func releaseAll(at now: UInt64) {
        releaseEverything(at: now)
        checkpointPending = false
    }

    // MARK: - For the flows

    func release(_ unit: HeldUnit, matched: Bool, at now: UInt64) {
        guard !unit.released else { return }
        unit.released = true
        heldFrames -= unit.frames.count
        for frame in unit.frames { outputs.append(.release(frame)) }
        if matched {
            counters.matched[unit.flow.flowProtocol.rawValue] += UInt64(unit.frames.count)
        } else {
            counters.releasedByCheckpoint += UInt64(unit.frames.count)
        }
        counters.recordHeld(nanoseconds: now &- unit.arrival)
        while let first = deadlines.first, first.released {
            deadlines.removeFirst()
            expiryCursor = max(0, expiryCursor - 1)
        }
    }

    func mismatch(flow: FlowKey, why: String, primary: [[UInt8]], secondary: [UInt8]?, at now: UInt64) {
        counters.mismatched[flow.flowProtocol.rawValue] += 1
        outputs.append(.mismatch(primary: primary, secondary: secondary))
        requestCheckpoint(.mismatch, flow: flow, at: now, detail: why)
    }

    // MARK: - Internals

    private func hold(_ frames: [[UInt8]], flow: FlowKey, at now: UInt64) -> HeldUnit {
        let unit = HeldUnit(frames: frames, arrival: now, deadline: now &+ settings.compareTimeout, flow: flow)
        deadlines.append(unit)
        return unit
    }

    private func dispatchPrimary(_ unit: HeldUnit, _ classified: Classified, at now: UInt64) {
        switch classified {
        case let .tcp(key, segment):
            unit.flow = key
            let target = stream(key, at: now)
            let before = target.secondaryDepth
            target.primary(unit, segment, engine: self, now: now)
            secondaryBuffered += target.secondaryDepth - before
        case let .datagram(key, content):
            unit.flow = key
            let target = flow(key, at: now)
            let before = target.secondaryDepth
            target.primary(unit, content: content, engine: self, now: now)
            secondaryBuffered += target.secondaryDepth - before
        case .fragment:
            preconditionFailure("fragments are reassembled before dispatch")
        }
    }

    private func dispatchSecondary(_ frame: [UInt8], _ classified: Classified, at now: UInt64) {
        switch classified {
        case let .tcp(key, segment):
            let target = stream(key, at: now)
            let before = target.secondaryDepth
            target.secondary(frame, segment, engine: self, now: now)
            secondaryBuffered += target.secondaryDepth - before
        case let .datagram(key, content):
            let target = flow(key, at: now)
            let before = target.secondaryDepth
            target.secondary(frame, content: content, engine: self, now: now)
            secondaryBuffered += target.secondaryDepth - before
        case .fragment:
            preconditionFailure("fragments are reassembled before dispatch")
        }
    }

    private func stream(_ key: FlowKey, at now: UInt64) -> TCPStream {
        if let existing = streams[key] { return existing }
        let created = TCPStream(key: key, now: now)
        streams[key] = created
        return created
    }

    private func flow(_ key: FlowKey, at now: UInt64) -> DatagramFlow {
        if let existing = datagrams[key] { return existing }
        let created = DatagramFlow(key: key, now: now)
        datagrams[key] = created
        return created
    }

    private func requestCheckpoint(_ reason: CheckpointReason, flow: FlowKey, at now: UInt64, detail: String? = nil) {
        guard !checkpointPending else { return }
        checkpointPending = true
        counters.checkpointsRequested += 1
        let description = detail.map { "\(flow): \($0)" } ?? flow.description
        outputs.append(.checkpoint(CheckpointRequest(reason: reason, flowProtocol: flow.flowProtocol,
                                                     flow: description, time: now)))
    }

    private func releaseEverything(at now: UInt64) {
        for unit in primaryFragments.removeAll() where unit.frames.isEmpty { unit.released = true }
        _ = secondaryFragments.removeAll()
        while !deadlines.isEmpty {
            release(deadlines.removeFirst(), matched: false, at: now)
        }
        expiryCursor = 0
        heldFrames = 0
        for stream in streams.values { stream.checkpointDone() }
        for flow in datagrams.values { flow.checkpointDone() }
        secondaryBuffered = 0
        streams = streams.filter { !$0.value.isClosed }
    }

    private func forgetIdleFlows(at now: UInt64) {
        let limit = settings.idleFlowTimeout
        streams = streams.filter { _, stream in
            let forget = stream.isIdle && (stream.isClosed || now &- stream.lastActivity >= limit)
            if forget { secondaryBuffered -= stream.secondaryDepth }
            return !forget
        }
        datagrams = datagrams.filter { _, flow in !(flow.isIdle && now &- flow.lastActivity >= limit) }
    }
}
