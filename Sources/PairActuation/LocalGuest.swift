import Durations
import ColoProtocol
import ControlSocket
import Glibc
import PairConfiguration
import SharedMemory
import SystemPackage
import struct Foundation.Data

/// This host's guest as the local daemons hold it: the VM in vmmd, its
/// disk in blockd, its network through proxyd. supervisord makes the
/// socketpairs between them and hands each end over (DESIGN.md section 2,
/// fd brokering); nothing here parses guest data.
final class LocalGuest: Sendable {
    static let diskName = "guest"

    let daemons: LocalDaemons
    let configuration: HostConfiguration
    /// Where the secondary keeps its active and hidden overlays.
    let stateDirectory: String

    init(daemons: LocalDaemons, configuration: HostConfiguration, stateDirectory: String) {
        self.daemons = daemons
        self.configuration = configuration
        self.stateDirectory = stateDirectory
    }

    /// The guest's end of the virtio-net frame socket, for proxyd.
    struct Plumbing: Sendable {
        let frames: FileDescriptor
    }

    // MARK: - Bringing a VM up

    /// Opens the disk as the primary's and boots the guest from its kernel.
    /// A failover commit this host was making when it died is finished
    /// first: blockd opens the disk as the secondary's, completes the
    /// commit from its journal and serves the result as the primary's.
    func boot() throws(ActuationError) -> Plumbing {
        try openDisk(role: commitJournalWaits ? .secondary : .primary)
        return try createVM(incoming: false)
    }

    /// Opens the disk as the secondary's (fresh overlays) and prepares an
    /// incoming VM with no RAM contents yet, for the migration to fill. A
    /// sync that failed half-way is retried the same way: the disk stays
    /// open (the mirror and the first checkpoint bring it up to date) and
    /// any VM of the failed attempt is stopped and replaced. A disk open in
    /// the primary's role (an old primary, or a commit blockd just finished
    /// from its journal) is closed and opened again as the secondary's: the
    /// new primary mirrors its own disk over it.
    func prepareIncoming() throws(ActuationError) -> Plumbing {
        _ = try? daemons.call(.vmmd, .vmStop(ColoVmStopRequest()))
        if let open = try? diskInfo(), open.role != .secondary {
            try closeDisk()
        }
        if (try? diskInfo()) == nil, try openDisk(role: .secondary).role != .secondary {
            try closeDisk()
            try openDisk(role: .secondary)
        }
        return try createVM(incoming: true)
    }

    /// The old primary after a handover: its VM goes, and the disk closes
    /// so that `prepareIncoming` opens the image again as a secondary's.
    func release() throws(ActuationError) {
        _ = try? daemons.call(.vmmd, .vmStop(ColoVmStopRequest()))
        try closeDisk()
    }

    /// blockd lets the disk go once vmmd has closed the stopped VM's block
    /// socket, which takes a moment.
    private func closeDisk() throws(ActuationError) {
        var request = ColoBlockdCloseDiskRequest()
        request.name = Self.diskName
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while true {
            do {
                try daemons.call(.blockd, .blockdCloseDisk(request))
                return
            } catch {
                guard ContinuousClock.now < deadline else { throw error }
                usleep(20_000)
            }
        }
    }

    private var activeOverlay: String { "\(stateDirectory)/\(Self.diskName).active" }
    private var hiddenOverlay: String { "\(stateDirectory)/\(Self.diskName).hidden" }
    private var commitJournalWaits: Bool { access(activeOverlay + ".commit", F_OK) == 0 }

    @discardableResult
    private func openDisk(role: ColoBlockdDiskRole) throws(ActuationError) -> ColoBlockdDiskInfo {
        var request = ColoBlockdOpenDiskRequest()
        request.name = Self.diskName
        request.role = role
        request.imagePath = configuration.guest.disk
        if role == .secondary {
            // Overlays start empty: the secondary disk equals the primary's
            // once the resync mirror has run.
            request.activePath = activeOverlay
            request.hiddenPath = hiddenOverlay
            // Overlays left by an earlier life of this host hold nothing of
            // the new primary's disk: they go. A failover commit journal
            // beside them means blockd must finish that commit first, so
            // then everything stays for it to recover.
            if !commitJournalWaits {
                unlink(request.activePath)
                unlink(request.hiddenPath)
            }
        }
        guard case .blockdDisk(let info)? = try daemons.call(.blockd, .blockdOpenDisk(request)).0 else {
            throw .daemon(.blockd, "the open reply carries no disk")
        }
        return info
    }

    private func createVM(incoming: Bool) throws(ActuationError) -> Plumbing {
        let (blockVM, blockService) = try socketPair("block")
        defer { try? blockVM.close() }
        do {
            defer { try? blockService.close() }
            var attach = ColoBlockdAttachGuestRequest()
            attach.disk = Self.diskName
            attach.socket = .at(0)
            try daemons.call(.blockd, .blockdAttachGuest(attach), fds: [blockService])
        }
        let (framesVM, framesProxy) = try socketPair("frames")
        defer { try? framesVM.close() }

        var fds: [FileDescriptor] = []
        var configurationMessage = ColoVmConfiguration()
        configurationMessage.memoryMib = configuration.guest.memoryBytes >> 20
        configurationMessage.vcpus = UInt32(configuration.guest.vcpus)
        configurationMessage.commandLine = configuration.guest.commandLine
        configurationMessage.macAddress = Data(configuration.network.guestMAC)
        configurationMessage.kernelFormat = .multiboot
        var kernel: FileDescriptor?
        defer { try? kernel?.close() }
        if !incoming {
            do {
                kernel = try FileDescriptor.open(configuration.guest.kernel, .readOnly, options: .closeOnExec)
            } catch {
                try? framesProxy.close()
                throw .system("cannot open the guest kernel \(configuration.guest.kernel): \(error)")
            }
            configurationMessage.kernelFormat = try kernelFormat(of: kernel!)
            configurationMessage.kernel = .at(fds.count)
            fds.append(kernel!)
        }
        configurationMessage.netFrames = .at(fds.count)
        fds.append(framesVM)
        configurationMessage.block = .at(fds.count)
        fds.append(blockVM)
        do {
            if incoming {
                var request = ColoVmPrepareIncomingRequest()
                request.configuration = configurationMessage
                try daemons.call(.vmmd, .vmPrepareIncoming(request), fds: fds, timeout: .seconds(20))
            } else {
                var request = ColoVmCreateRequest()
                request.configuration = configurationMessage
                try daemons.call(.vmmd, .vmCreate(request), fds: fds, timeout: .seconds(20))
            }
        } catch {
            try? framesProxy.close()
            throw error
        }
        return Plumbing(frames: framesProxy)
    }

    /// Multiboot for an ELF or a multiboot image, the Linux boot protocol
    /// for a bzImage ("HdrS" at 0x202).
    private func kernelFormat(of fd: FileDescriptor) throws(ActuationError) -> ColoKernelFormat {
        var magic = [UInt8](repeating: 0, count: 4)
        let read = magic.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, 4, 0x202) }
        return read == 4 && magic == Array("HdrS".utf8) ? .linuxBzimage : .multiboot
    }

    /// A SOCK_SEQPACKET socketpair, to hand one end to a daemon.
    func socketPair(_ what: String) throws(ActuationError) -> (FileDescriptor, FileDescriptor) {
        do {
            let (a, b) = try SeqpacketSocket.pair()
            return (a.fd, b.fd)
        } catch {
            throw .system("cannot make the \(what) socketpair: \(error)")
        }
    }

    // MARK: - The VM's state (vmstate.proto)

    /// Pauses the vCPUs; returns how long vmmd took.
    func pause() throws(ActuationError) {
        try daemons.call(.vmmd, .vmPause(ColoVmPauseRequest()))
    }

    func resume() throws(ActuationError) {
        try daemons.call(.vmmd, .vmResume(ColoVmResumeRequest()))
    }

    /// The pages written since the last sync, as a bitmap memfd.
    func dirtyLog() throws(ActuationError) -> FileDescriptor {
        let (body, fds) = try daemons.call(.vmmd, .vmDirtyLogSync(ColoVmDirtyLogSyncRequest()))
        guard case .vmDirtyLog(let log)? = body, Int(log.bitmap.index) < fds.count else {
            fds.forEach { try? $0.close() }
            throw .daemon(.vmmd, "the dirty log reply carries no bitmap")
        }
        return keepOnly(Int(log.bitmap.index), of: fds)
    }

    /// A dirty log with no page set, for a VM that has not run yet.
    func emptyDirtyLog() throws(ActuationError) -> FileDescriptor {
        let pages = Int(configuration.guest.memoryBytes / 4096)
        do {
            let memfd = try Memfd.create(name: "colo-no-dirty-pages", size: (pages + 63) / 64 * 8, sealedSize: true)
            return memfd.fd
        } catch {
            throw .system("cannot make an empty dirty bitmap: \(error)")
        }
    }

    /// The vCPU and device state, as a memfd.
    func saveState() throws(ActuationError) -> FileDescriptor {
        let (body, fds) = try daemons.call(.vmmd, .vmStateSave(ColoVmStateSaveRequest()))
        guard case .vmStateSaved(let saved)? = body, Int(saved.state.index) < fds.count else {
            fds.forEach { try? $0.close() }
            throw .daemon(.vmmd, "the state save reply carries no state")
        }
        return keepOnly(Int(saved.state.index), of: fds)
    }

    /// Loads a device state; with `checkOnly`, vmmd runs every check a load
    /// would and changes nothing.
    func loadState(_ state: FileDescriptor, checkOnly: Bool = false) throws(ActuationError) {
        var request = ColoVmStateLoadRequest()
        request.state = .at(0)
        request.checkOnly = checkOnly
        try daemons.call(.vmmd, .vmStateLoad(request), fds: [state])
    }

    /// The guest RAM memfd, for checkpointd.
    func memory() throws(ActuationError) -> FileDescriptor {
        let (body, fds) = try daemons.call(.vmmd, .vmGuestMemory(ColoVmGuestMemoryRequest()))
        guard case .vmGuestMemory(let memory)? = body, Int(memory.memory.index) < fds.count else {
            fds.forEach { try? $0.close() }
            throw .daemon(.vmmd, "the guest memory reply carries no memfd")
        }
        return keepOnly(Int(memory.memory.index), of: fds)
    }

    private func keepOnly(_ index: Int, of fds: [FileDescriptor]) -> FileDescriptor {
        for (position, fd) in fds.enumerated() where position != index { try? fd.close() }
        return fds[index]
    }

    // MARK: - The disk

    /// The primary's barrier, or the secondary's emptying of its overlays.
    func diskCheckpoint() throws(ActuationError) {
        var request = ColoBlockdCheckpointRequest()
        request.disk = Self.diskName
        try daemons.call(.blockd, .blockdCheckpoint(request), timeout: .seconds(30))
    }

    /// Hands the NBD connection to blockd: the primary mirrors its disk
    /// to the partner and then replicates; the secondary serves it.
    func attachDiskLink(_ fd: FileDescriptor, resync: Bool) throws(ActuationError) {
        defer { try? fd.close() }
        var request = ColoBlockdAttachLinkRequest()
        request.disk = Self.diskName
        request.socket = .at(0)
        request.resync = resync
        try daemons.call(.blockd, .blockdAttachLink(request), fds: [fd])
    }

    func diskInfo() throws(ActuationError) -> ColoBlockdDiskInfo {
        let (body, _) = try daemons.call(.blockd, .blockdStatus(ColoBlockdStatusRequest()))
        guard case .blockdStatus(let status)? = body,
              let disk = status.disks.first(where: { $0.name == Self.diskName }) else {
            throw .daemon(.blockd, "no disk named \(Self.diskName)")
        }
        return disk
    }

    /// The secondary's disk becomes the primary's: overlays committed.
    func diskFailover() throws(ActuationError) {
        var request = ColoBlockdFailoverRequest()
        request.disk = Self.diskName
        try daemons.call(.blockd, .blockdFailover(request), timeout: .seconds(30))
    }
}
