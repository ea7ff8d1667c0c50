import ColoProtocol
import Glibc
import PairConfiguration
import PeerAuthentication
import PeerLink
import SwiftProtobuf

/// One authenticated connection between the two supervisords of a pair,
/// after both sides said hello and agreed they protect the same pair from
/// opposite roles.
public final class PeerSession: Sendable {
    /// The channel name supervisor connections are authenticated for.
    public static let channel = "supervisor"

    public let fd: Int32
    public let stream: FrameStream
    /// The peer's hello.
    public let peer: PeerHostState

    private init(fd: Int32, peer: PeerHostState) {
        self.fd = fd
        self.stream = FrameStream(fd: fd, maxFrameBytes: 64 * 1024)
        self.peer = peer
    }

    deinit {
        close(fd)
    }

    /// Authenticates `fd` and exchanges hellos. On failure the fd is closed.
    public static func establish(fd: Int32, role: PeerAuthenticator.Role, pair: String, local: PeerHostState,
                                 key: PeerKey, timeout: Duration) throws(SupervisionError) -> PeerSession {
        do {
            _ = try PeerAuthenticator.authenticate(fd: fd, role: role, channel: channel, key: key, timeout: timeout)
            let stream = FrameStream(fd: fd, maxFrameBytes: 64 * 1024)
            var hello = PeerHello()
            hello.pair = pair
            hello.host = local
            hello.version = "1"
            var message = PeerMessage()
            message.hello = hello
            try stream.send(try message.serializedBytes(), timeout: timeout)
            guard let frame = try stream.receive(timeout: timeout) else {
                throw SupervisionError.peer("the peer closed before its hello")
            }
            guard case .hello(let peerHello) = try PeerMessage(serializedBytes: frame).body else {
                throw SupervisionError.peer("the peer's first message is not a hello")
            }
            guard peerHello.pair == pair else {
                throw SupervisionError.peer("the peer protects pair '\(peerHello.pair)', not '\(pair)'")
            }
            guard peerHello.host.role != local.role else {
                throw SupervisionError.peer("both hosts claim the \(local.role) role")
            }
            return PeerSession(fd: fd, peer: peerHello.host)
        } catch {
            close(fd)
            if let error = error as? SupervisionError { throw error }
            throw .peer("\(error)")
        }
    }

    public func send(_ message: PeerMessage, timeout: Duration) throws(SupervisionError) {
        do {
            try stream.send(try message.serializedBytes(), timeout: timeout)
        } catch {
            throw .peer("\(error)")
        }
    }

    /// The next message, or nil when the peer closed.
    public func receive(timeout: Duration?) throws(SupervisionError) -> PeerMessage? {
        do {
            guard let frame = try stream.receive(timeout: timeout) else { return nil }
            return try PeerMessage(serializedBytes: frame)
        } catch let error as FrameError where error == .timedOut {
            throw .timedOut
        } catch {
            throw .peer("\(error)")
        }
    }

    public func shutdown() {
        stream.shutdown()
    }
}

public enum SupervisionError: Error, Sendable, Equatable, CustomStringConvertible {
    case peer(String)
    case timedOut
    case state(String)

    public var description: String {
        switch self {
        case let .peer(detail): return "peer: \(detail)"
        case .timedOut: return "timed out"
        case let .state(detail): return "pair state: \(detail)"
        }
    }
}
