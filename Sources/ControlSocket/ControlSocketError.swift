import ColoProtocol
import SystemPackage

/// Why a control-socket operation failed. Typed so callers can tell a daemon
/// that is down (`system` with ENOENT/ECONNREFUSED, `disconnected`) from one
/// that answered with a refusal (`refused`) or too slowly (`timedOut`).
public enum ControlSocketError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A system call failed.
    case system(operation: String, errno: Errno)
    /// A wait ran past its deadline.
    case timedOut(operation: String)
    /// The peer closed the connection.
    case disconnected
    /// The daemon answered with an error that ends the connection (a response
    /// with id 0: peer not allowed, malformed or oversized datagram).
    case refused(ColoError)
    /// The daemon answered this request with an error.
    case failed(ColoError)
    /// A datagram from the peer did not decode as the expected message.
    case malformedMessage(String)
    /// A message was larger than the control protocol allows.
    case oversized(bytes: Int, limit: Int)
    /// More fds than one datagram may carry.
    case tooManyFds(Int)
    /// The socket path does not fit in sockaddr_un.
    case addressTooLong(String)
    /// The client was closed while the request waited.
    case clientClosed

    public var description: String {
        switch self {
        case let .system(operation, errno): return "\(operation): \(errno)"
        case let .timedOut(operation): return "\(operation): timed out"
        case .disconnected: return "the peer closed the connection"
        case let .refused(error): return "refused: \(error.code.name): \(error.message)"
        case let .failed(error): return "\(error.code.name): \(error.message)"
        case let .malformedMessage(detail): return "malformed message: \(detail)"
        case let .oversized(bytes, limit): return "message of \(bytes) bytes exceeds the limit of \(limit)"
        case let .tooManyFds(count): return "\(count) fds exceed the \(SeqpacketSocket.maxFdsPerDatagram) one datagram may carry"
        case let .addressTooLong(path): return "socket path too long or empty: \(path)"
        case .clientClosed: return "the client was closed"
        }
    }
}
