import PacketComparison
import Packets
import SequenceRewriter
import XCTest

let guestIP = IPAddress("10.0.0.2")!
let clientIP = IPAddress("10.0.0.1")!
let guestMAC = MACAddress("52:54:00:00:00:02")!
let clientMAC = MACAddress("02:00:00:00:00:01")!
let fromGuest = PacketBuilder(sourceMAC: guestMAC, destinationMAC: clientMAC, source: guestIP, destination: clientIP)
let fromClient = PacketBuilder(sourceMAC: clientMAC, destinationMAC: guestMAC, source: clientIP, destination: guestIP)

func tcp(_ frame: [UInt8]) throws -> TCPHeader {
    guard case let .ipv4(_, .tcp(header)) = try ParsedFrame.parse(frame).network else {
        throw PacketError.badField(.tcp, field: "not TCP", value: 0)
    }
    return header
}

func checksumValid(_ frame: [UInt8]) throws -> Bool {
    let header = try tcp(frame)
    let parsed = try ParsedFrame.parse(frame)
    guard case let .ipv4(ip, _) = parsed.network else { return false }
    let sum = InternetChecksum.pseudoHeaderSum(source: ip.source, destination: ip.destination,
                                               protocolNumber: IPProtocol.tcp, length: ip.payload.count)
    return InternetChecksum.finish(InternetChecksum.sum(frame, header.offset ..< ip.payload.upperBound, initial: sum)) == 0
}

final class SequenceRewriterTests: XCTestCase {
    let primaryISN: UInt32 = 0xffff_fff0       // wraps during the test
    let secondaryISN: UInt32 = 123_456
    let clientISN: UInt32 = 5000

    func testGuestAsServerLearnsTheOffsetFromTheClientsAck() throws {
        let rewriter = SequenceRewriter()
        var synAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN,
                                   acknowledgment: clientISN + 1, flags: [.syn, .ack])
        let original = synAck
        rewriter.guestOutput(&synAck, at: 0)
        XCTAssertEqual(synAck, original, "the offset is not known yet")

        // The client acknowledges the primary's SYN/ACK.
        var ack = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                 acknowledgment: primaryISN &+ 1, flags: .ack, payload: Array("GET /".utf8))
        rewriter.guestInput(&ack, at: 1)
        XCTAssertEqual(try tcp(ack).acknowledgment, secondaryISN + 1)
        XCTAssertTrue(try checksumValid(ack))
        XCTAssertEqual(rewriter.offset(guest: guestIP, guestPort: 80, peer: clientIP, peerPort: 40000),
                       primaryISN &- secondaryISN)

        var answer = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN + 1,
                                   acknowledgment: clientISN + 6, flags: [.ack, .psh], payload: Array("200 OK".utf8))
        rewriter.guestOutput(&answer, at: 2)
        XCTAssertEqual(try tcp(answer).sequence, primaryISN &+ 1)
        XCTAssertEqual(try tcp(answer).acknowledgment, clientISN + 6, "the client's space is shared")
        XCTAssertTrue(try checksumValid(answer))
    }

    func testGuestAsClientLearnsTheOffsetFromTheServersSynAck() throws {
        let rewriter = SequenceRewriter()
        var syn = fromGuest.tcp(sourcePort: 50000, destinationPort: 443, sequence: secondaryISN, flags: .syn)
        rewriter.guestOutput(&syn, at: 0)
        var synAck = fromClient.tcp(sourcePort: 443, destinationPort: 50000, sequence: 9, acknowledgment: primaryISN &+ 1,
                                    flags: [.syn, .ack])
        rewriter.guestInput(&synAck, at: 1)
        XCTAssertEqual(try tcp(synAck).acknowledgment, secondaryISN + 1)
        var data = fromGuest.tcp(sourcePort: 50000, destinationPort: 443, sequence: secondaryISN + 1, acknowledgment: 10,
                                 flags: .ack, payload: [1])
        rewriter.guestOutput(&data, at: 2)
        XCTAssertEqual(try tcp(data).sequence, primaryISN &+ 1)
    }

    func testTimestampsMoveToThePrimarysClock() throws {
        func timestamps(value: UInt32, echo: UInt32) -> [UInt8] {
            [1, 1, 8, 10] + [value, echo].flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
        }
        let rewriter = SequenceRewriter()
        // The secondary's timestamp clock runs 7 ticks ahead of the primary's.
        var synAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN,
                                   acknowledgment: clientISN + 1, flags: [.syn, .ack],
                                   options: timestamps(value: 1007, echo: 500))
        rewriter.guestOutput(&synAck, at: 0)
        var ack = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                 acknowledgment: primaryISN &+ 1, flags: .ack, options: timestamps(value: 501, echo: 1000))
        rewriter.guestInput(&ack, at: 1)
        XCTAssertEqual(try tcp(ack).timestamps(in: ack)?.echo, 1007)
        XCTAssertEqual(try tcp(ack).timestamps(in: ack)?.value, 501)
        XCTAssertTrue(try checksumValid(ack))
        var data = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN + 1,
                                 acknowledgment: clientISN + 1, flags: .ack, options: timestamps(value: 1010, echo: 501),
                                 payload: [1])
        rewriter.guestOutput(&data, at: 2)
        XCTAssertEqual(try tcp(data).timestamps(in: data)?.value, 1003)
        XCTAssertEqual(try tcp(data).timestamps(in: data)?.echo, 501)
        XCTAssertTrue(try checksumValid(data))
    }

    func testSACKEdgesAreRewritten() throws {
        let rewriter = SequenceRewriter()
        var synAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN,
                                   acknowledgment: clientISN + 1, flags: [.syn, .ack])
        rewriter.guestOutput(&synAck, at: 0)
        let left = primaryISN &+ 101, right = primaryISN &+ 201
        let sack: [UInt8] = [1, 1, 5, 10] + [left, right].flatMap { value in
            (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
        }
        var ack = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                 acknowledgment: primaryISN &+ 1, flags: .ack, options: sack)
        rewriter.guestInput(&ack, at: 1)
        let header = try tcp(ack)
        func edge(_ at: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(ack[header.offset + 24 + at + $1]) }
        }
        XCTAssertEqual(edge(0), secondaryISN + 101)
        XCTAssertEqual(edge(4), secondaryISN + 201)
        XCTAssertTrue(try checksumValid(ack))
    }

    func testCheckpointResetsOffsets() {
        let rewriter = SequenceRewriter()
        var synAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN,
                                   acknowledgment: clientISN + 1, flags: [.syn, .ack])
        rewriter.guestOutput(&synAck, at: 0)
        var ack = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                 acknowledgment: primaryISN &+ 1, flags: .ack)
        rewriter.guestInput(&ack, at: 1)
        XCTAssertEqual(rewriter.connectionCount, 1)
        rewriter.checkpointDone()
        XCTAssertEqual(rewriter.connectionCount, 0)
        // The secondary now uses the primary's numbers: nothing is rewritten.
        var data = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: primaryISN &+ 1,
                                 acknowledgment: clientISN + 1, flags: .ack, payload: [1])
        let original = data
        rewriter.guestOutput(&data, at: 2)
        XCTAssertEqual(data, original)
    }

    /// The rewriter's output and the primary's compare equal in the engine:
    /// a different initial sequence number is absorbed.
    func testRewrittenSecondaryMatchesThePrimary() {
        let rewriter = SequenceRewriter()
        let engine = ComparisonEngine(settings: ComparisonSettings(compareTimeout: 10_000_000, queueLimit: 64))
        let primarySynAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: primaryISN,
                                          acknowledgment: clientISN + 1, flags: [.syn, .ack])
        var secondarySynAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: secondaryISN,
                                            acknowledgment: clientISN + 1, flags: [.syn, .ack])
        engine.primaryFrame(primarySynAck, at: 0)
        rewriter.guestOutput(&secondarySynAck, at: 0)
        engine.secondaryFrame(secondarySynAck, at: 1)
        var ack = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                 acknowledgment: primaryISN &+ 1, flags: .ack, payload: Array("hi".utf8))
        rewriter.guestInput(&ack, at: 2)
        let body = Array(repeating: "0123456789", count: 300).joined()
        let bytes = Array(body.utf8)
        var primaryFrames: [[UInt8]] = []
        for start in stride(from: 0, to: bytes.count, by: 1448) {
            let chunk = Array(bytes[start ..< min(start + 1448, bytes.count)])
            let frame = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: primaryISN &+ 1 &+ UInt32(start),
                                      acknowledgment: clientISN + 3, flags: .ack, payload: chunk)
            primaryFrames.append(frame)
            engine.primaryFrame(frame, at: 3)
        }
        for start in stride(from: 0, to: bytes.count, by: 1000) {
            let chunk = Array(bytes[start ..< min(start + 1000, bytes.count)])
            var frame = fromGuest.tcp(sourcePort: 80, destinationPort: 40000,
                                      sequence: secondaryISN &+ 1 &+ UInt32(start), acknowledgment: clientISN + 3,
                                      flags: .ack, payload: chunk)
            rewriter.guestOutput(&frame, at: 4)
            engine.secondaryFrame(frame, at: 4)
        }
        let released = engine.takeOutputs().compactMap { output -> [UInt8]? in
            if case let .release(frame) = output { return frame }
            XCTFail("unexpected \(output)")
            return nil
        }
        XCTAssertEqual(released, [primarySynAck] + primaryFrames)
    }
}
