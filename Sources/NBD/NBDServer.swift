import ControlSocket
internal import CSupport
import Glibc
import Logging
import Synchronization

/// Counts the server keeps for status reports and tests.
public final class NBDServerCounters: Sendable {
    public let connections = Atomic<UInt64>(0)
    public let served = Atomic<UInt64>(0)
    public let rejected = Atomic<UInt64>(0)
    public let protocolErrors = Atomic<UInt64>(0)
    public init() {}
}

/// Serves NBD exports to any number of clients, each on a thread of its
/// own, from listening sockets (Unix or TCP, bound here or handed over)
/// and from single connected sockets handed over (the authenticated
/// replication link). Each source has its own catalog, so the link to the
/// peer reaches exports a local tool never sees and the other way round.
public final class NBDServer: Sendable {
    private let logger: Logger
    public let counters = NBDServerCounters()
    private let listeners = Mutex<[Int32]>([])
    private let stopping = Atomic<Bool>(false)

    public init(logger: Logger) {
        self.logger = logger
    }

    /// Accepts clients on `listener` (a listening stream socket this server
    /// now owns) until `stop()`.
    public func serve(listener: Int32, catalog: NBDExportCatalog, name: String) {
        listeners.withLock { $0.append(listener) }
        spawnThread(name: "nbd-accept") { [self] in
            while !stopping.load(ordering: .relaxed) {
                let client = colo_accept_cloexec(listener)
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                        if errno == EMFILE || errno == ENFILE { usleep(100_000) }
                        continue
                    }
                    logger.info("NBD listener closed", metadata: ["event": "nbd_listener_closed", "listener": "\(name)"])
                    return
                }
                serve(connection: client, catalog: catalog, peer: "\(name)#\(counters.connections.load(ordering: .relaxed) + 1)")
            }
        }
    }

    /// Serves one connected stream socket (this server now owns it).
    public func serve(connection fd: Int32, catalog: NBDExportCatalog, peer: String) {
        counters.connections.add(1, ordering: .relaxed)
        let connection = NBDServerConnection(socket: NBDSocket(adopting: fd), catalog: catalog, logger: logger,
                                             counters: counters)
        spawnThread(name: "nbd-conn") { connection.run(peer: peer) }
    }

    /// Stops accepting; connected clients finish on their own.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        for fd in listeners.withLock({ $0 }) {
            _ = shutdown(fd, Int32(Glibc.SHUT_RDWR))
            _ = close(fd)
        }
    }
}
