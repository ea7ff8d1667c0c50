/// Why a block session ended.
public enum BlockSessionError: Error, Sendable, Equatable, CustomStringConvertible {
    case badAttach(String)
    case protocolViolation(String)
    case socket(String)

    public var description: String {
        switch self {
        case let .badAttach(detail): return "attach refused: \(detail)"
        case let .protocolViolation(detail): return "protocol violation: \(detail)"
        case let .socket(detail): return "socket: \(detail)"
        }
    }
}
