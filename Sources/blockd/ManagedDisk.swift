import BlockDevice
import BlockImages
import BlockReplication
import ColoProtocol
import Logging
import ControlSocket
import Synchronization

/// One disk blockd serves: the guest-facing device and whatever stack
/// stands behind it in the disk's current role.
final class ManagedDisk: Sendable {
    enum Stack {
        case primary(ReplicatedDisk)
        case secondary(SecondaryDisk, FailoverCommit)
    }

    struct Facts {
        var stack: Stack
        var state: String
        var detail = ""
        var recoveredCommit = false
        var guestAttached = false
        var lastMirror: ResyncMirror?
    }

    let name: String
    let guest: GuestDisk
    let facts: Mutex<Facts>
    let logger: Logger

    init(name: String, stack: Stack, guest: GuestDisk, recoveredCommit: Bool, logger: Logger) {
        self.name = name
        self.guest = guest
        self.logger = logger
        var facts = Facts(stack: stack, state: "")
        facts.recoveredCommit = recoveredCommit
        if case .secondary = stack { facts.state = "secondary" }
        self.facts = Mutex(facts)
    }

    /// Opens the files a request names, finishing an interrupted failover
    /// commit first.
    static func open(_ request: ColoBlockdOpenDiskRequest, logger: Logger) throws(BlockError) -> ManagedDisk {
        let image = try RawImage(path: request.imagePath,
                                 createSize: request.createSizeBytes == 0 ? nil : request.createSizeBytes)
        switch request.role {
        case .primary:
            let disk = ReplicatedDisk(local: image, logger: logger)
            return ManagedDisk(name: request.name, stack: .primary(disk), guest: GuestDisk(disk),
                               recoveredCommit: false, logger: logger)
        case .secondary:
            guard !request.activePath.isEmpty, !request.hiddenPath.isEmpty else {
                throw .unsupported("a secondary disk needs active_path and hidden_path")
            }
            let secondary = try SecondaryDisk(
                secondary: image,
                active: try OverlayImage(path: request.activePath, capacity: image.capacity),
                hidden: try OverlayImage(path: request.hiddenPath, capacity: image.capacity))
            let commit = FailoverCommit(journalPath: request.activePath + ".commit")
            if try commit.recover(secondary) {
                logger.notice("finished an interrupted failover commit", metadata: [
                    "event": "failover_commit_recovered", "disk": "\(request.name)",
                ])
                secondary.fence()
                let disk = ReplicatedDisk(local: image, logger: logger)
                return ManagedDisk(name: request.name, stack: .primary(disk), guest: GuestDisk(disk),
                                   recoveredCommit: true, logger: logger)
            }
            return ManagedDisk(name: request.name, stack: .secondary(secondary, commit),
                               guest: GuestDisk(secondary.guestView), recoveredCommit: false, logger: logger)
        case .unspecified, .UNRECOGNIZED:
            throw .unsupported("the disk role must be PRIMARY or SECONDARY")
        }
    }

    var stack: Stack { facts.withLock { $0.stack } }

    /// Failover of a secondary: fence the old primary, commit on a thread
    /// of its own with the guest's I/O held, then serve as a primary.
    func failover() {
        guard case .secondary(let secondary, let commit) = stack else {
            if case .primary(let disk) = stack { disk.detach(reason: "failover requested") }
            return
        }
        secondary.fence()
        facts.withLock { $0.state = "committing" }
        logger.notice("failover commit started", metadata: ["event": "failover_commit_started", "disk": "\(name)"])
        spawnCommit(secondary: secondary, commit: commit)
    }

    private func spawnCommit(secondary: SecondaryDisk, commit: FailoverCommit) {
        let name = self.name
        let logger = self.logger
        spawnThread(name: "commit") { [self] in
            do throws(BlockError) {
                try guest.swap { _ throws(BlockError) in
                    try commit.run(secondary)
                    let disk = ReplicatedDisk(local: secondary.secondary, logger: logger)
                    facts.withLock {
                        $0.stack = .primary(disk)
                        $0.state = ""
                    }
                    return disk
                }
                logger.notice("failover commit done: serving as primary", metadata: [
                    "event": "failover_commit_done", "disk": "\(name)",
                ])
            } catch {
                facts.withLock {
                    $0.state = "commit_failed"
                    $0.detail = "\(error)"
                }
                logger.error("failover commit failed: \(error)", metadata: [
                    "event": "failover_commit_failed", "disk": "\(name)", "reason": "\(error)",
                ])
            }
        }
    }

    /// Lets go of the partner before the disk is dropped: a primary's
    /// replication link is cut, a secondary refuses the old primary's
    /// writes. Returns why the disk cannot close now (a guest attached, a
    /// failover commit running), or nil.
    func close() -> String? {
        let (attached, state, stack) = facts.withLock { ($0.guestAttached, $0.state, $0.stack) }
        if attached { return "a guest is attached: stop the VM first" }
        if state == "committing" { return "its failover commit is running" }
        switch stack {
        case .primary(let disk): disk.detach(reason: "disk closed")
        case .secondary(let secondary, _): secondary.fence()
        }
        return nil
    }

    func info() -> ColoBlockdDiskInfo {
        let current = facts.withLock { $0 }
        var info = ColoBlockdDiskInfo()
        info.name = name
        info.capacityBytes = guest.capacity
        info.recoveredCommit = current.recoveredCommit
        info.guestAttached = current.guestAttached
        info.detail = current.detail
        switch current.stack {
        case .primary(let disk):
            info.role = .primary
            info.state = disk.state
            if let reason = disk.soloReason, current.detail.isEmpty { info.detail = reason }
        case .secondary(let secondary, _):
            info.role = .secondary
            info.state = current.state
            let bytes = secondary.overlayBytes
            info.activeBytes = bytes.active
            info.hiddenBytes = bytes.hidden
        }
        if let mirror = current.lastMirror {
            let progress = mirror.progress
            var resync = ColoBlockdResyncProgress()
            resync.phase = progress.phase.rawValue
            resync.scannedBytes = progress.scannedBytes
            resync.capacityBytes = progress.capacityBytes
            resync.copiedBytes = progress.copiedBytes
            resync.dirtyBytes = progress.dirtyBytes
            resync.passes = UInt32(progress.passes)
            resync.switchPauseUs = progress.switchPauseMicroseconds
            resync.error = progress.error ?? ""
            info.resync = resync
        }
        return info
    }
}
