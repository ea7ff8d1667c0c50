import Durations
import ColoProtocol
import ControlSocket
import Synchronization
import SystemPackage

/// The daemons supervisord drives on its host.
public enum LocalDaemon: String, Sendable, CaseIterable {
    case vmmd, checkpointd, proxyd, blockd
}

/// Why a step of the pair's work failed: a local daemon refused or could
/// not be reached, the peer did not answer in time, or the step does not
/// fit the pair's state.
public enum ActuationError: Error, Sendable, Equatable, CustomStringConvertible {
    case daemon(LocalDaemon, String)
    case peer(String)
    case timedOut(String)
    case state(String)
    case system(String)

    public var description: String {
        switch self {
        case let .daemon(daemon, detail): return "\(daemon.rawValue): \(detail)"
        case let .peer(detail): return "peer: \(detail)"
        case let .timedOut(what): return "timed out waiting for \(what)"
        case let .state(detail): return detail
        case let .system(detail): return detail
        }
    }
}

/// One connection per local daemon, kept open between calls (a checkpoint
/// makes several calls while the guest is paused: no connect per call),
/// and made again when a daemon restarted.
public final class LocalDaemons: Sendable {
    public let runtimeDirectory: String
    private let clients = Mutex<[LocalDaemon: ControlClient]>([:])

    public init(runtimeDirectory: String) {
        self.runtimeDirectory = runtimeDirectory
    }

    public func socketPath(of daemon: LocalDaemon) -> String {
        "\(runtimeDirectory)/\(daemon.rawValue).sock"
    }

    /// Sends one request and returns the reply's body and fds; an error
    /// reply, a timeout or a lost daemon becomes `.daemon`. The caller owns
    /// `fds` and closes them afterwards (they were duplicated into the
    /// datagram).
    @discardableResult
    public func call(_ daemon: LocalDaemon, _ body: ColoRequest.OneOf_Body, fds: [FileDescriptor] = [],
                     timeout: Duration = .seconds(5)) throws(ActuationError) -> (ColoResponse.OneOf_Body?, [FileDescriptor]) {
        let client = try client(for: daemon)
        do {
            let response = try client.call(body, fds: fds, timeout: timeout)
            return (response.message.body, response.fds)
        } catch {
            switch error {
            case .failed(let refusal):
                throw .daemon(daemon, refusal.message)
            default:
                // The connection may be broken (daemon restarted): drop it so
                // the next call connects afresh.
                clients.withLock { if $0[daemon] === client { $0[daemon] = nil } }
                client.close()
                throw .daemon(daemon, "\(error)")
            }
        }
    }

    private func client(for daemon: LocalDaemon) throws(ActuationError) -> ControlClient {
        if let client = clients.withLock({ $0[daemon] }) { return client }
        let client: ControlClient
        do {
            client = try ControlClient(connectingTo: socketPath(of: daemon))
        } catch {
            throw .daemon(daemon, "cannot reach \(socketPath(of: daemon)): \(error)")
        }
        return clients.withLock { clients in
            if let existing = clients[daemon] {
                client.close()
                return existing
            }
            clients[daemon] = client
            return client
        }
    }

    /// Closes every connection.
    public func closeAll() {
        let all = clients.withLock { clients in
            defer { clients.removeAll() }
            return Array(clients.values)
        }
        all.forEach { $0.close() }
    }
}

extension ColoFdRef {
    /// A reference to the `index`th fd of the request.
    static func at(_ index: Int) -> ColoFdRef {
        var reference = ColoFdRef()
        reference.index = UInt32(index)
        return reference
    }
}
