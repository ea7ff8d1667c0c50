import BlockDevice
import BlockReplication
import ColoProtocol
import ControlSocket
import DaemonRuntime
import Glibc
import GuestBlockService
import Logging
import NBD
import PeerAuthentication
import Synchronization
import SystemPackage

/// blockd's control requests (Proto/colo/control/blockd.proto). Handlers
/// only check and record; waiting work (link authentication, the NBD
/// handshake, a failover commit, a resync) runs on threads of its own and
/// shows in status replies.
final class BlockdService: DaemonService {
    private let logger: Logger
    private let peerKey: PeerKey?
    private let server: NBDServer
    /// Exports for local tools (the plain NBD listeners).
    private let localCatalog = NBDExportCatalog()
    private let disks = Mutex<[String: ManagedDisk]>([:])

    init(environment: DaemonEnvironment, peerKey: PeerKey?) {
        logger = environment.logger
        self.peerKey = peerKey
        server = NBDServer(logger: environment.logger)
    }

    var state: String {
        let count = disks.withLock { $0.count }
        return count == 0 ? "idle" : "serving \(count) disk\(count == 1 ? "" : "s")"
    }

    func servePlainNBD(listener: Int32, name: String) {
        server.serve(listener: listener, catalog: localCatalog, name: name)
        logger.info("serving plain NBD", metadata: ["event": "nbd_listening", "address": "\(name)"])
    }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        switch body {
        case .blockdOpenDisk(let request): return openDisk(request)
        case .blockdAttachGuest(let request): return attachGuest(request, fds: context.fds)
        case .blockdAttachLink(let request): return attachLink(request, fds: context.fds)
        case .blockdCheckpoint(let request): return checkpoint(request)
        case .blockdFailover(let request): return failover(request)
        case .blockdCloseDisk(let request): return closeDisk(request.name)
        case .blockdServeNbd(let request):
            guard let fd = take(request.listener, from: context.fds) else {
                return .error(.missingFd, "the request carries no listener fd \(request.listener.index)")
            }
            servePlainNBD(listener: fd, name: "handed-over fd")
            return ControlReply(.blockdStatus(status()))
        case .blockdStatus: return ControlReply(.blockdStatus(status()))
        default:
            return nil
        }
    }

    /// The fd a request names; the others it carried are closed.
    private func take(_ reference: ColoFdRef, from fds: [FileDescriptor]) -> Int32? {
        var chosen: Int32?
        for (index, fd) in fds.enumerated() {
            if index == Int(reference.index) { chosen = fd.rawValue } else { try? fd.close() }
        }
        return chosen
    }

    private func disk(_ name: String) -> ManagedDisk? {
        disks.withLock { $0[name] }
    }

    private func openDisk(_ request: ColoBlockdOpenDiskRequest) -> ControlReply {
        let name = request.name
        guard (1...64).contains(name.utf8.count),
              name.utf8.allSatisfy({ isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }) else {
            return .error(.invalidArgument, "disk names are 1-64 characters of [A-Za-z0-9_-]")
        }
        guard disk(name) == nil else { return .error(.failedPrecondition, "disk \(name) is already open") }
        let managed: ManagedDisk
        do {
            managed = try ManagedDisk.open(request, logger: logger)
        } catch {
            return .error(.invalidArgument, "cannot open disk \(name): \(error)")
        }
        disks.withLock { $0[name] = managed }
        localCatalog.add(NBDExport(name: name, description: "the guest's view of disk \(name)", device: managed.guest))
        if case .secondary(let secondary, _) = managed.stack {
            localCatalog.add(NBDExport(name: "\(name).secondary", description: "the secondary disk of \(name)",
                                       device: secondary.secondary, readOnly: true))
        }
        logger.info("disk opened", metadata: [
            "event": "disk_opened", "disk": "\(name)", "role": "\(request.role)", "image": "\(request.imagePath)",
            "capacity": "\(managed.guest.capacity)", "recovered_commit": "\(managed.info().recoveredCommit)",
        ])
        return ControlReply(.blockdDisk(managed.info()))
    }

    /// An old primary becoming a fresh secondary opens the same image in
    /// the other role: the disk goes first, once no guest uses it.
    private func closeDisk(_ name: String) -> ControlReply {
        guard let managed = disk(name) else { return .error(.invalidArgument, "no disk named \(name)") }
        if let refusal = managed.close() { return .error(.failedPrecondition, "disk \(name): \(refusal)") }
        disks.withLock { $0[name] = nil }
        localCatalog.remove(named: name)
        localCatalog.remove(named: "\(name).secondary")
        logger.info("disk closed", metadata: ["event": "disk_closed", "disk": "\(name)"])
        return ControlReply(.blockdStatus(status()))
    }

    private func attachGuest(_ request: ColoBlockdAttachGuestRequest, fds: [FileDescriptor]) -> ControlReply {
        guard let fd = take(request.socket, from: fds) else {
            return .error(.missingFd, "the request carries no socket fd \(request.socket.index)")
        }
        guard let managed = disk(request.disk) else {
            close(fd)
            return .error(.invalidArgument, "no disk named \(request.disk)")
        }
        managed.facts.withLock { $0.guestAttached = true }
        let session = BlockSession(socket: SeqpacketSocket(adopting: .init(rawValue: fd)), device: managed.guest,
                                   serial: "colo-\(request.disk)", logger: logger)
        spawnThread(name: "block-session") {
            session.run()
            managed.facts.withLock { $0.guestAttached = false }
        }
        return ControlReply(.blockdDisk(managed.info()))
    }

    private func attachLink(_ request: ColoBlockdAttachLinkRequest, fds: [FileDescriptor]) -> ControlReply {
        guard let fd = take(request.socket, from: fds) else {
            return .error(.missingFd, "the request carries no socket fd \(request.socket.index)")
        }
        guard let managed = disk(request.disk) else {
            close(fd)
            return .error(.invalidArgument, "no disk named \(request.disk)")
        }
        guard let peerKey else {
            close(fd)
            return .error(.failedPrecondition, "blockd was started without --peer-key: links cannot be authenticated")
        }
        let stack = managed.stack
        if case .secondary = stack, request.resync {
            close(fd)
            return .error(.invalidArgument, "resync runs from a primary disk")
        }
        let role: PeerAuthenticator.Role
        if case .primary = stack { role = .initiator } else { role = .responder }
        let server = self.server
        let logger = self.logger
        let name = request.disk
        spawnThread(name: "nbd-link") {
            do {
                _ = try PeerAuthenticator.authenticate(fd: fd, role: role, channel: "nbd", key: peerKey)
            } catch {
                close(fd)
                managed.facts.withLock { $0.detail = "link authentication failed: \(error)" }
                logger.warning("replication link refused: \(error)", metadata: ["event": "link_refused", "disk": "\(name)"])
                return
            }
            switch stack {
            case .secondary(let secondary, _):
                let catalog = NBDExportCatalog()
                catalog.add(NBDExport(name: name, description: "primary writes to \(name)", device: secondary.primaryWrites))
                server.serve(connection: fd, catalog: catalog, peer: "replication link")
                managed.facts.withLock { $0.detail = "" }
                logger.info("serving the primary's writes", metadata: ["event": "link_attached", "disk": "\(name)"])
            case .primary(let disk):
                do {
                    let client = try NBDClient.connect(fd: fd, export: name, requestTimeout: .seconds(10))
                    if request.resync {
                        let mirror = try disk.resync(to: client)
                        managed.facts.withLock { $0.lastMirror = mirror; $0.detail = "" }
                    } else {
                        try disk.replicate(to: client)
                        managed.facts.withLock { $0.detail = "" }
                    }
                } catch {
                    managed.facts.withLock { $0.detail = "replication link failed: \(error)" }
                    logger.warning("replication link failed: \(error)", metadata: ["event": "link_failed", "disk": "\(name)"])
                }
            }
        }
        return ControlReply(.blockdDisk(managed.info()))
    }

    private func checkpoint(_ request: ColoBlockdCheckpointRequest) -> ControlReply {
        guard let managed = disk(request.disk) else { return .error(.invalidArgument, "no disk named \(request.disk)") }
        switch managed.stack {
        case .primary(let disk):
            disk.drain()
        case .secondary(let secondary, _):
            do {
                try secondary.checkpoint()
            } catch {
                return .error(.failedPrecondition, "checkpoint of \(request.disk) failed: \(error)")
            }
        }
        return ControlReply(.blockdDisk(managed.info()))
    }

    private func failover(_ request: ColoBlockdFailoverRequest) -> ControlReply {
        guard let managed = disk(request.disk) else { return .error(.invalidArgument, "no disk named \(request.disk)") }
        managed.failover()
        return ControlReply(.blockdDisk(managed.info()))
    }

    private func status() -> ColoBlockdStatus {
        var status = ColoBlockdStatus()
        status.disks = disks.withLock { Array($0.values) }.sorted { $0.name < $1.name }.map { $0.info() }
        status.nbdConnections = server.counters.connections.load(ordering: .relaxed)
        status.nbdRequestsServed = server.counters.served.load(ordering: .relaxed)
        status.nbdRequestsRejected = server.counters.rejected.load(ordering: .relaxed)
        status.nbdProtocolErrors = server.counters.protocolErrors.load(ordering: .relaxed)
        return status
    }
}
