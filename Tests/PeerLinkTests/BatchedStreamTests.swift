import Glibc
import PeerLink
import XCTest

final class BatchedStreamTests: XCTestCase {
    private func pair() -> (BatchedStream, BatchedStream) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        return (BatchedStream(fd: fds[0]), BatchedStream(fd: fds[1], receiveChunk: 1000, receiveLimit: 3000))
    }

    private func drain(_ stream: BatchedStream) throws -> [UInt8] {
        var received: [UInt8] = []
        try stream.receive { received.append(contentsOf: $0) }
        return received
    }

    func testGatheredBytesArriveInOrderAndReceiveNeverBlocks() throws {
        let (a, b) = pair()
        defer { a.close(); b.close() }
        XCTAssertEqual(try drain(b), [], "nothing waiting: an empty receive, not a wait")
        a.outgoing.append(contentsOf: [1, 2, 3])
        a.outgoing.append(contentsOf: [4, 5])
        try a.flush()
        XCTAssertTrue(a.outgoing.isEmpty)
        XCTAssertEqual(try drain(b), [1, 2, 3, 4, 5])
    }

    func testOneReceiveTakesAtMostItsLimit() throws {
        let (a, b) = pair()
        defer { a.close(); b.close() }
        a.outgoing = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        try a.flush()
        let first = try drain(b)
        XCTAssertEqual(first.count, 3000, "the rest waits for the next loop turn")
        XCTAssertEqual(first + (try drain(b)), (0..<5000).map { UInt8(truncatingIfNeeded: $0) })
    }

    func testAClosedPeerIsAnError() throws {
        let (a, b) = pair()
        defer { b.close() }
        a.close()
        XCTAssertThrowsError(try drain(b)) { XCTAssertEqual($0 as? FrameError, .closed) }
        b.outgoing = [1]
        XCTAssertThrowsError(try b.flush()) { XCTAssertEqual($0 as? FrameError, .closed) }
    }

    func testAStalledPeerTimesOut() throws {
        let (a, b) = pair()
        defer { a.close(); b.close() }
        a.outgoing = [UInt8](repeating: 0, count: 8 << 20)
        XCTAssertThrowsError(try a.flush(stallLimit: .milliseconds(50))) { XCTAssertEqual($0 as? FrameError, .timedOut) }
    }
}
