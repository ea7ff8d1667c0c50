import PacketComparison
import Packets
import XCTest

let guestMAC = MACAddress("52:54:00:00:00:02")!
let clientMAC = MACAddress("02:00:00:00:00:01")!
let guestIP = IPAddress("10.0.0.2")!
let clientIP = IPAddress("10.0.0.1")!
let ms: UInt64 = 1_000_000

/// Frames a guest (primary or secondary) sends on one TCP connection from
/// port 80 to the client's 40000; `header` varies what the comparison must
/// ignore (IP id, TTL, window, TCP options).
struct GuestSide {
    var builder = PacketBuilder(sourceMAC: guestMAC, destinationMAC: clientMAC, source: guestIP, destination: clientIP)
    var window: UInt16 = 65_535
    var options: [UInt8] = []

    init(identification: UInt16 = 0, ttl: UInt8 = 64, window: UInt16 = 65_535, options: [UInt8] = []) {
        builder.identification = identification
        builder.timeToLive = ttl
        self.window = window
        self.options = options
    }

    func segment(_ sequence: UInt32, ack: UInt32 = 5000, flags: TCPFlags = [.ack, .psh], _ text: String = "") -> [UInt8] {
        builder.tcp(sourcePort: 80, destinationPort: 40000, sequence: sequence, acknowledgment: ack, flags: flags,
                    window: window, options: options, payload: Array(text.utf8))
    }

    func udp(_ text: String) -> [UInt8] {
        builder.udp(sourcePort: 53, destinationPort: 33000, payload: Array(text.utf8))
    }
}

let primary = GuestSide(identification: 100, ttl: 64, window: 1000, options: [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0])
let secondary = GuestSide(identification: 7, ttl: 63, window: 2000, options: [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0])

final class ComparisonEngineTests: XCTestCase {
    var engine = ComparisonEngine(settings: ComparisonSettings(compareTimeout: 10 * ms, queueLimit: 64))

    override func setUp() {
        engine = ComparisonEngine(settings: ComparisonSettings(compareTimeout: 10 * ms, queueLimit: 64))
    }

    func released() -> [[UInt8]] {
        engine.takeOutputs().compactMap { if case let .release(frame) = $0 { return frame } else { return nil } }
    }

    func outputs() -> (released: [[UInt8]], checkpoints: [CheckpointRequest]) {
        var released: [[UInt8]] = []
        var checkpoints: [CheckpointRequest] = []
        engine.drainOutputs { output in
            switch output {
            case let .release(frame): released.append(frame)
            case let .checkpoint(request): checkpoints.append(request)
            case .mismatch: break
            }
        }
        return (released, checkpoints)
    }

    func testSameBytesInDifferentSegmentsMatch() {
        let p1 = primary.segment(1000, "hello ")
        let p2 = primary.segment(1006, "world, how are you")
        engine.primaryFrame(p1, at: 0)
        engine.primaryFrame(p2, at: 1)
        XCTAssertEqual(engine.heldFrames, 2)
        engine.secondaryFrame(secondary.segment(1000, "hel"), at: 2)
        XCTAssertTrue(released().isEmpty, "half a segment verified releases nothing")
        engine.secondaryFrame(secondary.segment(1003, "lo world, "), at: 3)
        XCTAssertEqual(released(), [p1])
        engine.secondaryFrame(secondary.segment(1013, "how are you"), at: 4)
        XCTAssertEqual(released(), [p2])
        XCTAssertEqual(engine.heldFrames, 0)
        XCTAssertEqual(engine.counters.matched[FlowProtocol.tcp.rawValue], 2)
        XCTAssertEqual(engine.counters.checkpointsRequested, 0)
        XCTAssertEqual(engine.secondaryDepth, 0)
    }

    func testOneDifferingByteRequestsACheckpointAndHoldsUntilDone() {
        let p1 = primary.segment(1000, "answer: 42")
        engine.primaryFrame(p1, at: 0)
        engine.secondaryFrame(secondary.segment(1000, "answer: 43"), at: 5)
        let (released, checkpoints) = outputs()
        XCTAssertTrue(released.isEmpty)
        XCTAssertEqual(checkpoints.map(\.reason), [.mismatch])
        XCTAssertEqual(checkpoints.first?.flowProtocol, .tcp)
        XCTAssertTrue(checkpoints.first?.flow.contains("10.0.0.2:80 > 10.0.0.1:40000") ?? false, "\(checkpoints)")
        XCTAssertEqual(engine.counters.mismatched[FlowProtocol.tcp.rawValue], 1)
        // Nothing released, no second request, while the checkpoint runs.
        let p2 = primary.segment(1010, "!")
        engine.primaryFrame(p2, at: 6)
        engine.secondaryFrame(secondary.segment(1010, "!"), at: 7)
        XCTAssertTrue(outputs().released.isEmpty)
        engine.checkpointDone(at: 8)
        XCTAssertEqual(outputs().released, [p1, p2])
        XCTAssertEqual(engine.counters.releasedByCheckpoint, 2)
        // Both guests continue from the same point: the next bytes compare again.
        engine.secondaryCheckpointMark()
        let p3 = primary.segment(1011, "next")
        engine.primaryFrame(p3, at: 9)
        engine.secondaryFrame(secondary.segment(1011, "next"), at: 10)
        XCTAssertEqual(outputs().released, [p3])
    }

    func testAMismatchShowsBothSidesFramesWhicheverArrivesLast() {
        // The secondary first, in pieces: the frame starting the differing
        // bytes is the one shown, not the last one.
        let s1 = secondary.segment(1000, "diff")
        engine.secondaryFrame(s1, at: 0)
        engine.secondaryFrame(secondary.segment(1004, "erent"), at: 1)
        let p1 = primary.segment(1000, "answer: 42")
        engine.primaryFrame(p1, at: 2)
        let shown = engine.takeOutputs().compactMap { output -> [[UInt8]]? in
            guard case let .mismatch(primaryFrames, secondaryFrame) = output else { return nil }
            return primaryFrames + [secondaryFrame ?? []]
        }
        XCTAssertEqual(shown, [[p1, s1]])
    }

    func testUnmatchedPrimaryExpiresAtItsPreciseDeadline() {
        engine.primaryFrame(primary.segment(1000, "a"), at: 3 * ms)
        engine.primaryFrame(primary.segment(1001, "b"), at: 5 * ms)
        XCTAssertEqual(engine.nextDeadline, 13 * ms)
        engine.advance(to: 13 * ms - 1)
        XCTAssertTrue(outputs().checkpoints.isEmpty)
        engine.advance(to: 13 * ms)
        XCTAssertEqual(outputs().checkpoints.map(\.reason), [.expired])
        XCTAssertEqual(engine.nextDeadline, 15 * ms)
        engine.advance(to: 15 * ms)
        XCTAssertTrue(outputs().checkpoints.isEmpty, "one request outstanding")
        XCTAssertEqual(engine.counters.expired[FlowProtocol.tcp.rawValue], 2)
        XCTAssertNil(engine.nextDeadline)
    }

    func testMatchedFramesCancelTheirDeadline() {
        engine.primaryFrame(primary.segment(1000, "a"), at: 0)
        engine.secondaryFrame(secondary.segment(1000, "a"), at: 1)
        XCTAssertNil(engine.nextDeadline)
        engine.advance(to: 100 * ms)
        XCTAssertTrue(outputs().checkpoints.isEmpty)
    }

    func testAckGating() {
        // The primary acknowledges client data up to 5100; the secondary has
        // only acknowledged 5050 so far.
        let data = primary.segment(1000, ack: 5100, "x")
        let pureAck = primary.segment(1001, ack: 5200, flags: .ack)
        engine.primaryFrame(data, at: 0)
        engine.primaryFrame(pureAck, at: 1)
        engine.secondaryFrame(secondary.segment(1000, ack: 5050, "x"), at: 2)
        XCTAssertTrue(released().isEmpty, "data verified, but its ACK is ahead of the secondary's")
        engine.secondaryFrame(secondary.segment(1001, ack: 5100, flags: .ack), at: 3)
        XCTAssertEqual(released(), [data])
        engine.secondaryFrame(secondary.segment(1001, ack: 5300, flags: .ack), at: 4)
        XCTAssertEqual(released(), [pureAck])
    }

    func testOutOfOrderAndRetransmittedSegments() {
        let p1 = primary.segment(1000, "abcdef")
        let p2 = primary.segment(1006, "ghij")
        engine.primaryFrame(p1, at: 0)
        engine.primaryFrame(p2, at: 1)
        engine.secondaryFrame(secondary.segment(1004, "efghij"), at: 2)   // arrives first
        engine.secondaryFrame(secondary.segment(1000, "abcd"), at: 3)
        XCTAssertEqual(released(), [p1, p2])
        // A primary retransmission of verified data leaves at once.
        let retransmission = primary.segment(1002, "cdef")
        engine.primaryFrame(retransmission, at: 4)
        XCTAssertEqual(released(), [retransmission])
        // A secondary retransmission changes nothing.
        engine.secondaryFrame(secondary.segment(1000, "abcdefghij"), at: 5)
        XCTAssertEqual(engine.secondaryDepth, 0)
        XCTAssertEqual(engine.counters.checkpointsRequested, 0)
    }

    func testHandshakeWithDifferentInitialSequenceNumbers() {
        // The secondary's SYN/ACK is in its own space (the rewriter learns the
        // offset from the client's ACK that follows); later segments arrive
        // rewritten into the primary's space.
        let synAck = primary.segment(70_000, ack: 5000, flags: [.syn, .ack])
        engine.primaryFrame(synAck, at: 0)
        engine.secondaryFrame(secondary.segment(9_999_999, ack: 5000, flags: [.syn, .ack]), at: 1)
        XCTAssertEqual(released(), [synAck])
        // Retransmitted SYN/ACK of the primary: the SYN is agreed already.
        engine.primaryFrame(synAck, at: 2)
        XCTAssertEqual(released(), [synAck])
        let data = primary.segment(70_001, ack: 5010, "response")
        engine.primaryFrame(data, at: 3)
        engine.secondaryFrame(secondary.segment(70_001, ack: 5010, "response"), at: 4)
        XCTAssertEqual(released(), [data])
    }

    func testSynFlagsMustAgree() {
        engine.primaryFrame(primary.segment(1, ack: 5000, flags: [.syn, .ack]), at: 0)
        engine.secondaryFrame(secondary.segment(2, ack: 5001, flags: [.syn, .ack]), at: 1)
        XCTAssertEqual(outputs().checkpoints.map(\.reason), [.mismatch])
    }

    func testFinAndReset() {
        let last = primary.segment(1000, flags: [.ack, .fin], "bye")
        engine.primaryFrame(last, at: 0)
        engine.secondaryFrame(secondary.segment(1000, "bye"), at: 1)
        XCTAssertTrue(released().isEmpty, "the secondary has not closed yet")
        engine.secondaryFrame(secondary.segment(1003, flags: [.ack, .fin]), at: 2)
        XCTAssertEqual(released(), [last])

        var builder = GuestSide().builder
        builder.identification = 1
        let resetKey = builder.tcp(sourcePort: 81, destinationPort: 40001, sequence: 2000, flags: .rst)
        engine.primaryFrame(resetKey, at: 3)
        XCTAssertTrue(released().isEmpty)
        engine.secondaryFrame(builder.tcp(sourcePort: 81, destinationPort: 40001, sequence: 2000, flags: .rst), at: 4)
        XCTAssertEqual(released(), [resetKey])
    }

    func testDataBeyondTheOtherSidesFinIsAMismatch() {
        engine.primaryFrame(primary.segment(1000, "abc"), at: 0)
        engine.secondaryFrame(secondary.segment(1000, flags: [.ack, .fin], "ab"), at: 1)
        XCTAssertEqual(outputs().checkpoints.map(\.reason), [.mismatch])
    }

    func testUDPComparesThePayloadNotTheIPHeader() {
        let p = primary.udp("same answer")
        engine.primaryFrame(p, at: 0)
        engine.secondaryFrame(secondary.udp("same answer"), at: 1)   // other TTL and IP id
        XCTAssertEqual(released(), [p])
        engine.primaryFrame(primary.udp("one"), at: 2)
        engine.secondaryFrame(secondary.udp("two"), at: 3)
        let (released, checkpoints) = outputs()
        XCTAssertTrue(released.isEmpty)
        XCTAssertEqual(checkpoints.map(\.reason), [.mismatch])
        XCTAssertEqual(checkpoints.first?.flowProtocol, .udp)
        XCTAssertEqual(engine.counters.matched[FlowProtocol.udp.rawValue], 1)
    }

    func testARPAndIPv6AreCompared() {
        let arp = AddressAnnouncement.gratuitousARP(mac: guestMAC, address: guestIP)
        engine.primaryFrame(arp, at: 0)
        XCTAssertTrue(released().isEmpty)
        engine.secondaryFrame(arp, at: 1)
        XCTAssertEqual(released(), [arp])
        let na = AddressAnnouncement.unsolicitedNeighborAdvertisement(mac: guestMAC, address: IPAddress("fd00::2")!)
        engine.primaryFrame(na, at: 2)
        engine.secondaryFrame(AddressAnnouncement.unsolicitedNeighborAdvertisement(
            mac: MACAddress("52:54:00:00:00:03")!, address: IPAddress("fd00::2")!), at: 3)
        XCTAssertEqual(outputs().checkpoints.first?.flowProtocol, .icmp)
    }

    func testFragmentsAreReassembledBeforeComparison() {
        // The same UDP datagram, fragmented at different points with
        // different IP ids on the two sides.
        let payload = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
        let whole = primary.builder.udp(sourcePort: 9, destinationPort: 9, payload: payload)
        let udpBytes = Array(whole[34...])
        func fragments(_ builder: PacketBuilder, id: UInt16, cut: Int) -> [[UInt8]] {
            func fragment(_ bytes: ArraySlice<UInt8>, offset: Int, more: Bool) -> [UInt8] {
                var frame = builder.ip(protocolNumber: IPProtocol.udp, transport: Array(bytes), checksumAt: nil)
                frame[18] = UInt8(id >> 8); frame[19] = UInt8(id & 0xff)
                let field = UInt16(offset / 8) | (more ? 0x2000 : 0)
                frame[20] = UInt8(field >> 8); frame[21] = UInt8(field & 0xff)
                return frame
            }
            return [fragment(udpBytes[0..<cut], offset: 0, more: true),
                    fragment(udpBytes[cut...], offset: cut, more: false)]
        }
        let p = fragments(primary.builder, id: 1, cut: 16)
        let s = fragments(secondary.builder, id: 2, cut: 24)
        engine.primaryFrame(p[1], at: 0)
        engine.primaryFrame(p[0], at: 1)
        engine.secondaryFrame(s[0], at: 2)
        XCTAssertTrue(released().isEmpty)
        engine.secondaryFrame(s[1], at: 3)
        XCTAssertEqual(released(), [p[1], p[0]])
        XCTAssertEqual(engine.counters.matched[FlowProtocol.udp.rawValue], 2)
    }

    func testAFullQueueRequestsACheckpointAndNeverDrops() {
        var sent: [[UInt8]] = []
        for index in 0..<100 {
            let frame = primary.segment(1000 + UInt32(index), "x")
            sent.append(frame)
            engine.primaryFrame(frame, at: UInt64(index))
        }
        XCTAssertTrue(engine.isFull)
        XCTAssertEqual(engine.heldFrames, 100)
        XCTAssertEqual(outputs().checkpoints.map(\.reason), [.queueFull])
        engine.checkpointDone(at: 200)
        XCTAssertEqual(outputs().released, sent)
        XCTAssertFalse(engine.isFull)
    }

    func testStaleSecondaryFramesAreIgnoredUntilTheMark() {
        engine.primaryFrame(primary.segment(1000, "a"), at: 0)
        engine.advance(to: 20 * ms)
        engine.checkpointDone(at: 21 * ms)
        _ = outputs()
        // Sent by the secondary before the checkpoint, delivered after it.
        engine.secondaryFrame(secondary.segment(1000, "zzz"), at: 22 * ms)
        XCTAssertEqual(engine.counters.secondaryDiscarded, 1)
        engine.secondaryCheckpointMark()
        let p = primary.segment(1001, "b")
        engine.primaryFrame(p, at: 23 * ms)
        engine.secondaryFrame(secondary.segment(1001, "b"), at: 24 * ms)
        XCTAssertEqual(outputs().released, [p])
    }

    func testMalformedFramesAreComparedAsBytes() {
        let garbage: [UInt8] = [1, 2, 3]
        engine.primaryFrame(garbage, at: 0)
        engine.secondaryFrame(garbage, at: 1)
        XCTAssertEqual(released(), [garbage])
        XCTAssertEqual(engine.counters.malformed, 2)
    }

    func testHeldTimeHistogram() {
        engine.primaryFrame(primary.udp("a"), at: 0)
        engine.secondaryFrame(secondary.udp("a"), at: 3000)    // 3 µs
        XCTAssertEqual(engine.counters.heldTimeHistogram[2], 1)
    }
}
