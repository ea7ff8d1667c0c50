import Durations
import ColoProtocol
import ControlSocket
import Glibc
import Synchronization

/// What a daemon reports about itself in a `DaemonStatus`: filled in by the
/// runtime as start-up proceeds, read by status requests (the daemon's own,
/// and supervisord's report that includes itself).
public final class SelfStatus: Sendable {
    private struct Facts {
        var sandbox = ColoSandboxStatus()
        var socketOrigin = ""
        var server: ControlServer?
    }

    public let daemon: String
    private let startedAt = ContinuousClock.now
    private let facts = Mutex(Facts())

    init(daemon: String) {
        self.daemon = daemon
    }

    func record(sandbox: ColoSandboxStatus) { facts.withLock { $0.sandbox = sandbox } }
    func record(socketOrigin: String) { facts.withLock { $0.socketOrigin = socketOrigin } }
    func record(server: ControlServer) { facts.withLock { $0.server = server } }

    public var sandbox: ColoSandboxStatus { facts.withLock { $0.sandbox } }

    /// The daemon's status now, in the given state.
    public func snapshot(state: String) -> ColoDaemonStatus {
        let current = facts.withLock { $0 }
        var status = ColoDaemonStatus()
        status.daemon = daemon
        status.version = coloVersion
        status.pid = getpid()
        status.state = state
        status.uptimeMs = UInt64((ContinuousClock.now - startedAt).milliseconds)
        status.sandbox = current.sandbox
        status.socketOrigin = current.socketOrigin
        status.requestsServed = current.server?.requestsServed ?? 0
        status.requestsRefused = current.server?.requestsRefused ?? 0
        return status
    }
}
