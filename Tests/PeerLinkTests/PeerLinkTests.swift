import Dispatch
import Glibc
import PairConfiguration
@testable import PeerLink
import XCTest

final class FrameStreamTests: XCTestCase {
    private func pair() -> (FrameStream, FrameStream, [Int32]) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        return (FrameStream(fd: fds[0], maxFrameBytes: 4096), FrameStream(fd: fds[1], maxFrameBytes: 4096), fds)
    }

    func testFramesKeepTheirBoundaries() throws {
        let (a, b, fds) = pair()
        defer { fds.forEach { close($0) } }
        try a.send([1, 2, 3])
        try a.send([])
        try a.send([UInt8](repeating: 7, count: 4096))
        XCTAssertEqual(try b.receive(timeout: .seconds(1)), [1, 2, 3])
        XCTAssertEqual(try b.receive(timeout: .seconds(1)), [])
        XCTAssertEqual(try b.receive(timeout: .seconds(1))?.count, 4096)
        a.shutdown()
        XCTAssertNil(try b.receive(timeout: .seconds(1)), "a clean close between frames is nil")
    }

    func testLyingLengthTruncationAndSilence() throws {
        let (_, b, fds) = pair()
        defer { fds.forEach { close($0) } }
        // A header claiming 1 GiB is refused before anything is buffered.
        var header: [UInt8] = [0x40, 0, 0, 0]
        write(fds[0], &header, 4)
        XCTAssertThrowsError(try b.receive(timeout: .seconds(1))) { error in
            XCTAssertEqual(error as? FrameError, .tooLarge(1 << 30, limit: 4096))
        }
        let (_, c, fds2) = pair()
        defer { fds2.forEach { close($0) } }
        XCTAssertThrowsError(try c.receive(timeout: .milliseconds(100))) { error in
            XCTAssertEqual(error as? FrameError, .timedOut)
        }
        var partial: [UInt8] = [0, 0, 0, 10, 1, 2]
        write(fds2[0], &partial, partial.count)
        shutdown(fds2[0], Int32(SHUT_WR))
        XCTAssertThrowsError(try c.receive(timeout: .seconds(1))) { error in
            XCTAssertEqual(error as? FrameError, .truncated)
        }
        XCTAssertThrowsError(try c.send([UInt8](repeating: 0, count: 5000))) { error in
            XCTAssertEqual(error as? FrameError, .tooLarge(5000, limit: 4096))
        }
    }

    func testTCPConnectionOverLoopback() throws {
        let address = SocketAddress(host: IPAddress("127.0.0.1")!, port: UInt16.random(in: 20000...40000))
        let listener = try TCPConnection.listen(on: address)
        defer { close(listener) }
        let accepted = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var server: Int32 = -1
        Thread.detachNewThread {
            server = (try? TCPConnection.accept(from: listener, timeout: .seconds(2))) ?? -1
            accepted.signal()
        }
        let client = try TCPConnection.connect(to: address, timeout: .seconds(2))
        defer { close(client) }
        accepted.wait()
        XCTAssertGreaterThanOrEqual(server, 0)
        defer { close(server) }
        var noDelay: Int32 = 0
        var length = socklen_t(4)
        getsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, &length)
        XCTAssertEqual(noDelay, 1)
        try FrameStream(fd: client).send(Array("hello".utf8))
        XCTAssertEqual(try FrameStream(fd: server).receive(timeout: .seconds(1)), Array("hello".utf8))
        // Nobody listening: refused at once, not a hang.
        XCTAssertThrowsError(try TCPConnection.connect(
            to: SocketAddress(host: address.host, port: address.port &+ 1), timeout: .seconds(2)))
    }
}
