/// One non-TCP flow (UDP, ICMP, ARP, other protocols, malformed frames):
/// the two guests' datagrams are compared in order, content for content.
final class DatagramFlow {
    let key: FlowKey
    private var primary = FIFO<(unit: HeldUnit, content: ArraySlice<UInt8>)>()
    private var secondary = FIFO<(frame: [UInt8], content: ArraySlice<UInt8>)>()
    private(set) var diverged = false
    var lastActivity: UInt64

    init(key: FlowKey, now: UInt64) {
        self.key = key
        lastActivity = now
    }

    var secondaryDepth: Int { secondary.count }
    var isIdle: Bool { primary.isEmpty && secondary.isEmpty }

    func primary(_ unit: HeldUnit, content: ArraySlice<UInt8>, engine: ComparisonEngine, now: UInt64) {
        lastActivity = now
        primary.append((unit, content))
        match(engine: engine, now: now)
    }

    func secondary(_ frame: [UInt8], content: ArraySlice<UInt8>, engine: ComparisonEngine, now: UInt64) {
        lastActivity = now
        secondary.append((frame, content))
        match(engine: engine, now: now)
    }

    func checkpointDone() {
        primary.removeAll()
        secondary.removeAll()
        diverged = false
    }

    private func match(engine: ComparisonEngine, now: UInt64) {
        while !diverged, let (unit, content) = primary.first, let (frame, other) = secondary.first {
            secondary.removeFirst()
            guard content.elementsEqual(other) else {
                diverged = true
                engine.mismatch(flow: key, why: "content differs", primary: unit.frames, secondary: frame, at: now)
                return
            }
            primary.removeFirst()
            engine.release(unit, matched: true, at: now)
        }
    }
}
