import Dispatch
import Glibc
@testable import PeerAuthentication
import XCTest

final class PeerAuthenticatorTests: XCTestCase {
    private let key = try! PeerKey(bytes: Array("a pair's shared secret, 32 bytes".utf8))

    /// Runs both ends of a handshake over a stream socketpair.
    private func handshake(
        initiator: (key: PeerKey, channel: String), responder: (key: PeerKey, channel: String)
    ) -> (Result<PeerAuthenticator.Session, PeerAuthenticationError>,
          Result<PeerAuthenticator.Session, PeerAuthenticationError>) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { fds.forEach { close($0) } }
        let responded = ResultBox()
        let done = DispatchSemaphore(value: 0)
        let responderFD = fds[1]
        Thread.detachNewThread {
            responded.value = Result { () throws(PeerAuthenticationError) in
                try PeerAuthenticator.authenticate(fd: responderFD, role: .responder, channel: responder.channel,
                                                   key: responder.key, timeout: .seconds(2))
            }
            // Whatever happened, the initiator must not wait for more.
            shutdown(responderFD, Int32(SHUT_RDWR))
            done.signal()
        }
        let initiated = Result { () throws(PeerAuthenticationError) in
            try PeerAuthenticator.authenticate(fd: fds[0], role: .initiator, channel: initiator.channel,
                                               key: initiator.key, timeout: .seconds(2))
        }
        done.wait()
        return (initiated, responded.value!)
    }

    func testSameKeyAndChannelAuthenticatesBothSidesWithOneSessionKey() throws {
        let (a, b) = handshake(initiator: (key, "ram-0"), responder: (key, "ram-0"))
        let sessionA = try a.get(), sessionB = try b.get()
        XCTAssertEqual(sessionA.sessionKey, sessionB.sessionKey)
        XCTAssertEqual(sessionA.sessionKey.count, 32)
        // Fresh nonces: another connection gets another session key.
        let (c, _) = handshake(initiator: (key, "ram-0"), responder: (key, "ram-0"))
        XCTAssertNotEqual(try c.get().sessionKey, sessionA.sessionKey)
    }

    func testWrongKeyIsRefusedByBothSides() throws {
        let other = try PeerKey(bytes: Array("another pair's secret, 32 bytes!".utf8))
        let (a, b) = handshake(initiator: (other, "nbd"), responder: (key, "nbd"))
        XCTAssertEqual(a.failure, .proofMismatch)
        XCTAssertEqual(b.failure, .proofMismatch)
    }

    func testAConnectionForAnotherChannelIsRefused() {
        let (_, b) = handshake(initiator: (key, "proxyd-frames"), responder: (key, "nbd"))
        XCTAssertEqual(b.failure, .wrongChannel(expected: "nbd", received: "proxyd-frames"))
    }

    func testGarbageTruncationAndSilenceAreRefusedInTime() throws {
        for (name, bytes) in [("garbage", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)),
                              ("truncated hello", Array("COLOPEER".utf8) + [1, 0, 3])] {
            var fds: [Int32] = [-1, -1]
            XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
            _ = bytes.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
            if name == "truncated hello" { shutdown(fds[1], Int32(SHUT_WR)) }
            let started = ContinuousClock.now
            XCTAssertThrowsError(try PeerAuthenticator.authenticate(
                fd: fds[0], role: .responder, channel: "nbd", key: key, timeout: .milliseconds(300)), name)
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(2), name)
            fds.forEach { close($0) }
        }
        // A peer that says nothing costs the timeout, not a hang.
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { fds.forEach { close($0) } }
        XCTAssertThrowsError(try PeerAuthenticator.authenticate(
            fd: fds[0], role: .responder, channel: "nbd", key: key, timeout: .milliseconds(200))) { error in
            XCTAssertEqual(error as? PeerAuthenticationError, .timedOut)
        }
    }

    func testReflectedHelloIsRefused() throws {
        // A "peer" that echoes everything back claims our own role.
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { fds.forEach { close($0) } }
        let echo = fds[1]
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                let count = read(echo, &buffer, buffer.count)
                if count <= 0 { return }
                _ = write(echo, buffer, count)
            }
        }
        XCTAssertThrowsError(try PeerAuthenticator.authenticate(
            fd: fds[0], role: .initiator, channel: "nbd", key: key, timeout: .seconds(1))) { error in
            guard case .notAPeer = error as? PeerAuthenticationError else { return XCTFail("\(error)") }
        }
    }

    func testShortKeysAreRejected() {
        XCTAssertThrowsError(try PeerKey(bytes: Array("short".utf8)))
        XCTAssertThrowsError(try PeerKey.load(path: "/nonexistent/key"))
    }
}

/// The responder's outcome, written by its thread before `done` is signalled
/// and read after.
private final class ResultBox: @unchecked Sendable {
    var value: Result<PeerAuthenticator.Session, PeerAuthenticationError>?
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
