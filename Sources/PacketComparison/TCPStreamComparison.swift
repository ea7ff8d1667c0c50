import Packets

/// One TCP connection's output from both guests, compared by sequence range.
///
/// Everything is kept in the primary's sequence space: the secondary's
/// segments arrive already rewritten into it (SequenceRewriter on the
/// secondary host), except its SYN, which is sent before the offset is
/// known and is therefore compared by flags, acknowledgment and data only.
///
/// Both sides' data is appended to a byte queue starting at `verified`, the
/// first sequence number not yet known to agree, so different segmentation
/// does not matter: the common prefix is compared, the remainder kept.
/// Retransmissions (data below a queue's end) add nothing; out-of-order
/// segments are parked until the gap before them fills.
///
/// A primary segment is released, in arrival order, when its data lies below
/// `verified`, its FIN has been agreed, and (ACK gating) the secondary has
/// acknowledged at least as much as it acknowledges, so the client never sees
/// an acknowledgment the secondary could not honour after a failover.
final class TCPStream {
    static let maximumParked = 256

    let key: FlowKey
    private(set) var verified: UInt32?
    private var primaryBytes = ByteQueue()
    private var secondaryBytes = ByteQueue()
    private var primaryParked: [(sequence: UInt32, data: ArraySlice<UInt8>)] = []
    private var secondaryParked: [(sequence: UInt32, data: ArraySlice<UInt8>)] = []
    private var primarySyn: SegmentInfo?
    private var secondarySyn: SegmentInfo?
    private var synMatchedAt: UInt32?
    private var primaryFin: UInt32?
    private var secondaryFin: UInt32?
    private var finVerified = false
    private var primaryAck: UInt32?
    private var secondaryAck: UInt32?
    private var primaryHighest: UInt32?
    private var secondaryResets = 0
    /// The secondary's frame whose bytes start the part not yet compared:
    /// what a mismatch found on the primary's arrival shows as the
    /// secondary's side.
    private var firstUncomparedSecondary: [UInt8]?
    private var matchedResets = 0
    private(set) var resetReleased = false
    private var held = FIFO<(unit: HeldUnit, segment: SegmentInfo)>()
    /// Ends of the secondary segments whose data is buffered, for the depth count.
    private var secondarySegmentEnds = FIFO<UInt32>()
    private(set) var diverged = false
    var lastActivity: UInt64

    init(key: FlowKey, now: UInt64) {
        self.key = key
        lastActivity = now
    }

    var secondaryDepth: Int { secondarySegmentEnds.count + secondaryParked.count }
    var isIdle: Bool { held.isEmpty }
    var isClosed: Bool { (finVerified || resetReleased) && held.isEmpty }

    func primary(_ unit: HeldUnit, _ segment: SegmentInfo, engine: ComparisonEngine, now: UInt64) {
        lastActivity = now
        if segment.flags.contains(.syn) {
            if synMatchedAt != segment.sequence { primarySyn = segment }
        } else {
            if verified == nil && primarySyn == nil {
                // A connection seen mid-stream: the primary's first byte is
                // where comparing starts, also for the secondary's bytes
                // that came first.
                verified = segment.sequence
                drainParked(into: &secondaryBytes, parked: &secondaryParked)
            }
            if !segment.payload.isEmpty {
                add(segment.sequence, segment.payload, to: &primaryBytes, parked: &primaryParked)
            }
            if segment.flags.contains(.fin) { primaryFin = segment.sequence &+ UInt32(segment.payload.count) }
        }
        if segment.flags.contains(.ack) { primaryAck = maxSeq(primaryAck, segment.acknowledgment) }
        primaryHighest = maxSeq(primaryHighest, segment.dataEnd)
        held.append((unit, segment))
        compare(engine: engine, now: now, secondaryFrame: nil)
    }

    func secondary(_ frame: [UInt8], _ segment: SegmentInfo, engine: ComparisonEngine, now: UInt64) {
        lastActivity = now
        if segment.flags.contains(.syn) {
            secondarySyn = segment
        } else {
            if segment.flags.contains(.rst) { secondaryResets += 1 }
            if !segment.payload.isEmpty {
                let nothingUncompared = secondaryBytes.count == 0 && secondaryParked.isEmpty
                if add(segment.sequence, segment.payload, to: &secondaryBytes, parked: &secondaryParked) {
                    if nothingUncompared { firstUncomparedSecondary = frame }
                    secondarySegmentEnds.append(segment.sequence &+ UInt32(segment.payload.count))
                }
            }
            if segment.flags.contains(.fin) { secondaryFin = segment.sequence &+ UInt32(segment.payload.count) }
        }
        if segment.flags.contains(.ack) { secondaryAck = maxSeq(secondaryAck, segment.acknowledgment) }
        compare(engine: engine, now: now, secondaryFrame: frame)
    }

    /// The checkpoint made the secondary equal to the primary: whatever the
    /// primary sent now counts as agreed, in the primary's space (the
    /// rewriter's offsets are reset to zero at the same time).
    func checkpointDone() {
        held.removeAll()
        primaryBytes.removeAll()
        secondaryBytes.removeAll()
        primaryParked.removeAll()
        secondaryParked.removeAll()
        secondarySegmentEnds.removeAll()
        firstUncomparedSecondary = nil
        if let syn = primarySyn {
            synMatchedAt = syn.sequence
            secondarySyn = syn
        }
        if let fin = primaryFin {
            verified = fin &+ 1
            finVerified = true
        } else if let highest = primaryHighest {
            verified = highest
        }
        secondaryFin = primaryFin
        secondaryAck = primaryAck
        secondaryResets = 0
        matchedResets = 0
        diverged = false
    }

    // MARK: - Comparison

    private func compare(engine: ComparisonEngine, now: UInt64, secondaryFrame: [UInt8]?) {
        guard !diverged else { return }
        func diverge(_ why: String) {
            diverged = true
            engine.mismatch(flow: key, why: why, primary: held.first?.unit.frames ?? [],
                            secondary: secondaryFrame ?? firstUncomparedSecondary, at: now)
        }
        if let syn = primarySyn, synMatchedAt != syn.sequence, let other = secondarySyn {
            guard syn.flags.intersection([.syn, .ack, .rst, .fin]) == other.flags.intersection([.syn, .ack, .rst, .fin]),
                  !syn.flags.contains(.ack) || syn.acknowledgment == other.acknowledgment,
                  syn.payload.elementsEqual(other.payload) else {
                return diverge("SYN differs")
            }
            synMatchedAt = syn.sequence
            if verified == nil {
                verified = syn.sequence &+ 1 &+ UInt32(syn.payload.count)
                drainParked(into: &primaryBytes, parked: &primaryParked)
                drainParked(into: &secondaryBytes, parked: &secondaryParked)
            }
        }
        guard let start = verified else { return }
        let common = min(primaryBytes.count, secondaryBytes.count)
        if common > 0 {
            if let difference = primaryBytes.firstDifference(from: secondaryBytes, count: common) {
                return diverge("payload differs at sequence \(start &+ UInt32(difference))")
            }
            primaryBytes.drop(common)
            secondaryBytes.drop(common)
            verified = start &+ UInt32(common)
            while let end = secondarySegmentEnds.first, seqLessOrEqual(end, verified!) {
                secondarySegmentEnds.removeFirst()
            }
        }
        let position = verified!
        if let primaryFin, let secondaryFin, primaryFin != secondaryFin {
            return diverge("FIN at different sequence numbers")
        }
        if secondaryFin == position && primaryBytes.count > 0 { return diverge("primary sends data past the secondary's FIN") }
        if primaryFin == position && secondaryBytes.count > 0 { return diverge("secondary sends data past the primary's FIN") }
        if !finVerified, let fin = primaryFin, fin == position, secondaryFin == fin {
            verified = fin &+ 1
            finVerified = true
        }
        releaseReady(engine: engine, at: now)
    }

    private func releaseReady(engine: ComparisonEngine, at now: UInt64) {
        while let (unit, segment) = held.first {
            guard isReleasable(segment) else { return }
            held.removeFirst()
            engine.release(unit, matched: true, at: now)
        }
    }

    private func isReleasable(_ segment: SegmentInfo) -> Bool {
        if segment.flags.contains(.rst) {
            guard secondaryResets > matchedResets else { return false }
            matchedResets += 1
            resetReleased = true
            return true
        }
        if segment.flags.contains(.syn) {
            guard synMatchedAt == segment.sequence else { return false }
        } else {
            let end = segment.sequence &+ UInt32(segment.payload.count)
            if !segment.payload.isEmpty {
                guard let verified, seqLessOrEqual(end, verified) else { return false }
            }
            if segment.flags.contains(.fin) {
                guard finVerified, primaryFin == end else { return false }
            }
        }
        if segment.flags.contains(.ack) {
            guard let secondaryAck, seqLessOrEqual(segment.acknowledgment, secondaryAck) else { return false }
        }
        return true
    }

    /// Adds a side's data at `sequence`; returns whether any of it was new.
    @discardableResult
    private func add(_ sequence: UInt32, _ data: ArraySlice<UInt8>, to queue: inout ByteQueue,
                     parked: inout [(sequence: UInt32, data: ArraySlice<UInt8>)]) -> Bool {
        guard let verified else {
            guard parked.count < Self.maximumParked else { return false }
            parked.append((sequence, data))
            return true
        }
        let queueEnd = verified &+ UInt32(queue.count)
        let end = sequence &+ UInt32(data.count)
        if seqLessOrEqual(end, queueEnd) { return false }
        if seqLessOrEqual(sequence, queueEnd) {
            queue.append(data.dropFirst(Int(queueEnd &- sequence)))
            drainParked(into: &queue, parked: &parked)
            return true
        }
        guard parked.count < Self.maximumParked else { return false }
        parked.append((sequence, data))
        return true
    }

    private func drainParked(into queue: inout ByteQueue, parked: inout [(sequence: UInt32, data: ArraySlice<UInt8>)]) {
        guard let verified else { return }
        var progress = true
        while progress && !parked.isEmpty {
            progress = false
            let queueEnd = verified &+ UInt32(queue.count)
            for index in parked.indices {
                let (sequence, data) = parked[index]
                guard seqLessOrEqual(sequence, queueEnd) else { continue }
                let end = sequence &+ UInt32(data.count)
                if seqLess(queueEnd, end) { queue.append(data.dropFirst(Int(queueEnd &- sequence))) }
                parked.remove(at: index)
                progress = true
                break
            }
        }
    }

    private func maxSeq(_ current: UInt32?, _ candidate: UInt32) -> UInt32 {
        guard let current else { return candidate }
        return seqLess(current, candidate) ? candidate : current
    }
}
