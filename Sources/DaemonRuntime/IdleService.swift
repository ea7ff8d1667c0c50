import ColoProtocol
import ControlSocket

/// The service of a daemon that so far serves only the requests every daemon
/// shares (status, sandbox probe): it reports "idle" and refuses the rest
/// as unknown.
public struct IdleService: DaemonService {
    public init() {}

    public var state: String { "idle" }

    public func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        nil
    }
}
