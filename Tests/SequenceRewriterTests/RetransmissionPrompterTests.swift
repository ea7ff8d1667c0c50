import Packets
import SequenceRewriter
import XCTest

final class RetransmissionPrompterTests: XCTestCase {
    let clientISN: UInt32 = 5000
    let guestISN: UInt32 = 0xffff_ff00         // wraps during the tests

    /// A client connected to the guest's port 80, the request "GET /" sent
    /// and acknowledged with the guest's SYN/ACK only.
    func connected(_ prompter: RetransmissionPrompter) {
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN, flags: .syn), at: 0)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN,
                                            acknowledgment: clientISN + 1, flags: [.syn, .ack]), at: 1)
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                            acknowledgment: guestISN &+ 1, flags: [.ack, .psh], window: 64019,
                                            payload: Array("GET /".utf8)), at: 2)
    }

    func testAnAnswerTheClientHasNotAcknowledgedGetsThreeDuplicatesOfItsNewestAck() throws {
        let prompter = RetransmissionPrompter()
        connected(prompter)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN &+ 1,
                                            acknowledgment: clientISN + 6, flags: [.ack, .psh],
                                            payload: Array("200 OK".utf8)), at: 3)
        let frames = prompter.duplicateAcknowledgments()
        XCTAssertEqual(frames.count, 3)
        XCTAssertEqual(Set(frames).count, 1, "the same acknowledgment three times")
        let parsed = try ParsedFrame.parse(frames[0])
        XCTAssertEqual(parsed.ethernet.source, clientMAC)
        XCTAssertEqual(parsed.ethernet.destination, guestMAC)
        guard case let .ipv4(ip, .tcp(header)) = parsed.network else { return XCTFail("not TCP/IPv4") }
        XCTAssertEqual(ip.source, clientIP)
        XCTAssertEqual(ip.destination, guestIP)
        XCTAssertEqual(header.sourcePort, 40000)
        XCTAssertEqual(header.destinationPort, 80)
        XCTAssertEqual(header.sequence, clientISN + 6, "the client's next sequence number")
        XCTAssertEqual(header.acknowledgment, guestISN &+ 1, "the client's newest acknowledgment")
        XCTAssertEqual(header.window, 64019, "an unchanged window, or it is no duplicate")
        XCTAssertEqual(header.flags, .ack)
        XCTAssertTrue(header.payload.isEmpty)
        XCTAssertTrue(try checksumValid(frames[0]))
    }

    func testNothingIsPromptedOnceTheClientAcknowledgedEverything() {
        let prompter = RetransmissionPrompter()
        connected(prompter)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN &+ 1,
                                            acknowledgment: clientISN + 6, flags: .ack, payload: [1, 2, 3]), at: 3)
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 6,
                                            acknowledgment: guestISN &+ 4, flags: .ack), at: 4)
        XCTAssertEqual(prompter.duplicateAcknowledgments(), [])
        // An older acknowledgment arriving late changes nothing.
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 6,
                                            acknowledgment: guestISN &+ 2, flags: .ack, window: 1), at: 5)
        XCTAssertEqual(prompter.duplicateAcknowledgments(), [])
    }

    func testAfterACheckpointWhatTheGuestSentIsUnknownUntilItSendsAgain() throws {
        let prompter = RetransmissionPrompter()
        connected(prompter)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN &+ 1,
                                            acknowledgment: clientISN + 6, flags: .ack), at: 3)
        XCTAssertEqual(prompter.duplicateAcknowledgments(), [], "a pure ACK leaves nothing outstanding")
        prompter.checkpointDone()
        XCTAssertEqual(prompter.duplicateAcknowledgments().count, 3, "the primary's guest may have sent more")
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN &+ 1,
                                            acknowledgment: clientISN + 6, flags: .ack), at: 4)
        XCTAssertEqual(prompter.duplicateAcknowledgments(), [])
    }

    func testResetAndClosedConnectionsAreForgotten() {
        let prompter = RetransmissionPrompter()
        connected(prompter)
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 6, flags: .rst), at: 3)
        XCTAssertEqual(prompter.connectionCount, 0)

        connected(prompter)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN &+ 1,
                                            acknowledgment: clientISN + 6, flags: [.ack, .fin], payload: [1]), at: 3)
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 6,
                                            acknowledgment: guestISN &+ 2, flags: [.ack, .fin]), at: 4)
        XCTAssertEqual(prompter.connectionCount, 1, "the guest's FIN is not acknowledged yet")
        XCTAssertEqual(prompter.duplicateAcknowledgments().count, 3)
        prompter.peerSegment(fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 7,
                                            acknowledgment: guestISN &+ 3, flags: .ack), at: 5)
        XCTAssertEqual(prompter.connectionCount, 0)

        connected(prompter)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN &+ 1, flags: .rst), at: 3)
        XCTAssertEqual(prompter.connectionCount, 0)
    }

    func testTheDuplicatesRepeatTheTimestampsAndGoThroughTheRewriter() throws {
        let rewriter = SequenceRewriter()
        let prompter = RetransmissionPrompter()
        let primaryISN: UInt32 = 77_000
        let options: [UInt8] = [1, 1, 8, 10, 0, 0, 0, 50, 0, 0, 0, 40]
        // The secondary guest answers a SYN with its own ISN; the client
        // acknowledges the primary's.
        var syn = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN, flags: .syn)
        prompter.peerSegment(syn, at: 0)
        rewriter.guestInput(&syn, at: 0)
        var synAck = fromGuest.tcp(sourcePort: 80, destinationPort: 40000, sequence: guestISN,
                                   acknowledgment: clientISN + 1, flags: [.syn, .ack])
        rewriter.guestOutput(&synAck, at: 1)
        prompter.guestSegment(synAck, at: 1)
        let request = fromClient.tcp(sourcePort: 40000, destinationPort: 80, sequence: clientISN + 1,
                                     acknowledgment: primaryISN + 1, flags: .ack, window: 500, options: options, payload: [9])
        prompter.peerSegment(request, at: 2)
        var delivered = request
        rewriter.guestInput(&delivered, at: 2)

        var duplicate = try XCTUnwrap(prompter.duplicateAcknowledgments().first)
        XCTAssertEqual(try tcp(duplicate).acknowledgment, primaryISN + 1, "in the client's space")
        XCTAssertEqual(try tcp(duplicate).timestamps(in: duplicate)?.value, 50)
        XCTAssertEqual(try tcp(duplicate).timestamps(in: duplicate)?.echo, 40)
        rewriter.guestInput(&duplicate, at: 3)
        XCTAssertEqual(try tcp(duplicate).acknowledgment, try tcp(delivered).acknowledgment,
                       "the guest sees the acknowledgment it already has")
        XCTAssertEqual(try tcp(duplicate).sequence, clientISN + 2)
        XCTAssertTrue(try checksumValid(duplicate))
    }

    func testOtherTrafficIsIgnoredAndTheTableIsBounded() {
        let prompter = RetransmissionPrompter(capacity: 4)
        prompter.peerSegment(fromClient.udp(sourcePort: 1, destinationPort: 7, payload: [1]), at: 0)
        prompter.peerSegment([1, 2, 3], at: 0)
        prompter.guestSegment(fromGuest.tcp(sourcePort: 80, destinationPort: 1, sequence: 1, flags: .ack), at: 0)
        XCTAssertEqual(prompter.connectionCount, 0)
        for port in UInt16(1)...10 {
            prompter.peerSegment(fromClient.tcp(sourcePort: port, destinationPort: 80, sequence: 1, acknowledgment: 1,
                                                flags: .ack), at: UInt64(port))
        }
        XCTAssertLessThanOrEqual(prompter.connectionCount, 4)
    }
}
