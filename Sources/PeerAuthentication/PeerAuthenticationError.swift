/// Why a connection to the peer host was not authenticated. Every case ends
/// the connection before any payload is read.
public enum PeerAuthenticationError: Error, Sendable, Equatable, CustomStringConvertible {
    case badKey(String)
    /// The peer does not speak this protocol (wrong magic or version).
    case notAPeer(String)
    /// The peer opened the connection for another purpose.
    case wrongChannel(expected: String, received: String)
    /// The peer's proof does not match: it holds another key.
    case proofMismatch
    case timedOut
    case closed
    case io(String)

    public var description: String {
        switch self {
        case let .badKey(detail): return "peer key: \(detail)"
        case let .notAPeer(detail): return "not a colo peer: \(detail)"
        case let .wrongChannel(expected, received):
            return "peer opened channel '\(received)' where '\(expected)' was expected"
        case .proofMismatch: return "peer authentication failed: the peer holds a different key"
        case .timedOut: return "peer authentication timed out"
        case .closed: return "the peer closed the connection during authentication"
        case let .io(detail): return "peer authentication: \(detail)"
        }
    }
}
