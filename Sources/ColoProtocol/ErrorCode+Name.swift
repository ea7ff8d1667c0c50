extension ColoErrorCode {
    /// The stable short name used in logs, JSON output and exit messages
    /// (the proto enum name without its prefix, lower-cased).
    public var name: String {
        switch self {
        case .unspecified: return "unspecified"
        case .malformed: return "malformed"
        case .unknownRequest: return "unknown_request"
        case .oversized: return "oversized"
        case .permissionDenied: return "permission_denied"
        case .invalidArgument: return "invalid_argument"
        case .failedPrecondition: return "failed_precondition"
        case .missingFd: return "missing_fd"
        case .unavailable: return "unavailable"
        case .timeout: return "timeout"
        case .internal: return "internal"
        case .UNRECOGNIZED(let value): return "code_\(value)"
        }
    }
}

extension ColoError {
    /// An error with a code and a message for people.
    public init(_ code: ColoErrorCode, _ message: String) {
        self.init()
        self.code = code
        self.message = message
    }
}
