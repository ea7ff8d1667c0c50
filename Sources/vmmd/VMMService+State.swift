import Durations
import ColoProtocol
import ControlSocket
import Glibc
import Logging
import SharedMemory
import SystemPackage
import VirtualMachine

/// Pause, resume, dirty log, state save and load, RAM hand-off and VMs
/// prepared for incoming state (Proto/colo/control/vmstate.proto).
/// Each answers once done; pausing waits for the vCPUs (milliseconds) and
/// for block requests in flight (bounded).
extension VMMService {
    func handleStateRequest(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        switch body {
        case .vmPause:
            context.fds.forEach { try? $0.close() }
            return withVM { vm in pause(vm) }
        case .vmResume:
            context.fds.forEach { try? $0.close() }
            return withVM { vm in resume(vm) }
        case .vmDirtyLogSync:
            context.fds.forEach { try? $0.close() }
            return withVM { vm in syncDirtyLog(vm) }
        case .vmStateSave:
            context.fds.forEach { try? $0.close() }
            return withVM { vm in saveState(vm) }
        case .vmStateLoad(let request):
            return loadState(request, fds: context.fds)
        case .vmGuestMemory:
            context.fds.forEach { try? $0.close() }
            guard memoryUsers.contains(context.peer.uid) else {
                logger.warning("guest RAM refused to uid \(context.peer.uid)", metadata: [
                    "event": "guest_memory_refused", "peer_uid": "\(context.peer.uid)"])
                return .error(.permissionDenied, "uid \(context.peer.uid) may not have the guest RAM (vmmd --memory-user)")
            }
            return withVM { vm in guestMemory(vm, peer: context.peer) }
        case .vmPrepareIncoming(let request):
            return create(request.configuration, fds: context.fds, incoming: true)
        default:
            return nil
        }
    }

    private func withVM(_ body: (VirtualMachine) -> ControlReply) -> ControlReply {
        guard let vm = lock.withLock({ vm }), vm.end == nil else {
            return .error(.failedPrecondition, "no VM is running")
        }
        return body(vm)
    }

    private func pause(_ vm: VirtualMachine) -> ControlReply {
        do {
            let timings = try vm.pause()
            var reply = ColoVmPaused()
            reply.vcpusStoppedUs = UInt64(clamping: timings.vcpusStopped.microseconds)
            reply.pausedUs = UInt64(clamping: timings.paused.microseconds)
            logger.info("VM paused", metadata: [
                "event": "vm_paused", "vcpus_stopped_us": "\(reply.vcpusStoppedUs)", "paused_us": "\(reply.pausedUs)"])
            return ControlReply(.vmPaused(reply))
        } catch {
            return refusal(error, "pause")
        }
    }

    private func resume(_ vm: VirtualMachine) -> ControlReply {
        do {
            var reply = ColoVmResumed()
            reply.resumeUs = try UInt64(clamping: vm.resume().microseconds)
            logger.info("VM resumed", metadata: ["event": "vm_resumed", "resume_us": "\(reply.resumeUs)"])
            return ControlReply(.vmResumed(reply))
        } catch {
            return refusal(error, "resume")
        }
    }

    private func syncDirtyLog(_ vm: VirtualMachine) -> ControlReply {
        do {
            let sync = try vm.syncDirtyLog()
            var reply = ColoVmDirtyLog()
            reply.bitmap.index = 0
            reply.pageCount = UInt64(sync.pageCount)
            reply.dirtyPages = UInt64(sync.dirtyPages)
            reply.devicePages = UInt64(sync.devicePages)
            reply.allPages = sync.allPages
            reply.syncUs = UInt64(clamping: sync.duration.microseconds)
            reply.mode = vm.dirtyLogMode.rawValue
            logger.debug("dirty log synced", metadata: [
                "event": "dirty_log_synced", "dirty_pages": "\(sync.dirtyPages)", "device_pages": "\(sync.devicePages)",
                "all_pages": "\(sync.allPages)", "sync_us": "\(reply.syncUs)"])
            return ControlReply(.vmDirtyLog(reply), fds: [sync.bitmap.fd], closeFdsAfterSending: true)
        } catch {
            return refusal(error, "dirty log sync")
        }
    }

    private func saveState(_ vm: VirtualMachine) -> ControlReply {
        let began = ContinuousClock.now
        let blob: [UInt8]
        do {
            blob = try vm.saveState()
        } catch {
            return refusal(error, "state save")
        }
        let memfd: Memfd
        do {
            memfd = try Memfd.create(name: "colo-vm-state", size: blob.count, sealedSize: true)
        } catch {
            return .error(.internal, "state memfd: \(error)")
        }
        if let failure = Self.writeWhole(blob, to: memfd.fd) {
            try? memfd.fd.close()
            return .error(.internal, "writing the state memfd: \(failure)")
        }
        var reply = ColoVmStateSaved()
        reply.state.index = 0
        reply.bytes = UInt64(blob.count)
        reply.saveUs = UInt64(clamping: (ContinuousClock.now - began).microseconds)
        logger.info("VM state saved", metadata: ["event": "vm_state_saved", "bytes": "\(blob.count)", "save_us": "\(reply.saveUs)"])
        return ControlReply(.vmStateSaved(reply), fds: [memfd.fd], closeFdsAfterSending: true)
    }

    private func loadState(_ request: ColoVmStateLoadRequest, fds: [FileDescriptor]) -> ControlReply {
        defer { fds.forEach { try? $0.close() } }
        guard request.hasState, request.state.index < fds.count else {
            return .error(.missingFd, "the state names fd \(request.state.index); the request carries \(fds.count)")
        }
        guard let vm = lock.withLock({ vm }), vm.end == nil else {
            return .error(.failedPrecondition, "no VM to load into (prepare one for incoming state)")
        }
        let began = ContinuousClock.now
        let blob: [UInt8]
        switch Self.readWhole(fds[Int(request.state.index)], limit: StateBlob.maximumSize) {
        case .success(let bytes): blob = bytes
        case .failure(let error): return .error(.invalidArgument, "state fd: \(error)")
        }
        do {
            try vm.loadState(blob, checkOnly: request.checkOnly)
        } catch {
            return refusal(error, request.checkOnly ? "state check" : "state load")
        }
        var reply = ColoVmStateLoaded()
        reply.loadUs = UInt64(clamping: (ContinuousClock.now - began).microseconds)
        logger.info(request.checkOnly ? "VM state checked" : "VM state loaded", metadata: [
            "event": request.checkOnly ? "vm_state_checked" : "vm_state_loaded", "bytes": "\(blob.count)", "load_us": "\(reply.loadUs)"])
        return ControlReply(.vmStateLoaded(reply))
    }

    /// Writes `bytes` at offset 0; the error, if any.
    static func writeWhole(_ bytes: [UInt8], to fd: FileDescriptor) -> Errno? {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress! + offset, $0.count - offset, off_t(offset)) }
            if written < 0 {
                if errno == EINTR { continue }
                return Errno(rawValue: errno)
            }
            offset += written
        }
        return nil
    }

    /// The whole content of a memfd (or file), up to `limit` bytes.
    static func readWhole(_ fd: FileDescriptor, limit: Int) -> Result<[UInt8], ReadFailure> {
        var status = stat()
        guard fstat(fd.rawValue, &status) == 0 else { return .failure(ReadFailure("fstat: \(Errno(rawValue: errno))")) }
        let size = Int(status.st_size)
        guard size <= limit else { return .failure(ReadFailure("\(size) bytes exceed \(limit)")) }
        var bytes = [UInt8](repeating: 0, count: size)
        var offset = 0
        while offset < size {
            let count = bytes.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress! + offset, size - offset, off_t(offset)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                return .failure(ReadFailure(count < 0 ? "read: \(Errno(rawValue: errno))" : "ended at \(offset) of \(size) bytes"))
            }
            offset += count
        }
        return .success(bytes)
    }

    private func guestMemory(_ vm: VirtualMachine, peer: PeerCredentials) -> ControlReply {
        let copy = fcntl(vm.memory.memfd.fd.rawValue, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return .error(.internal, "dup of the RAM memfd: \(Errno(rawValue: errno))") }
        var reply = ColoVmGuestMemory()
        reply.memory.index = 0
        reply.bytes = vm.memory.size
        reply.regions = vm.memory.regions.map { region in
            var message = ColoGuestMemoryRegion()
            message.guestAddress = region.guestAddress
            message.size = region.size
            message.memfdOffset = region.memfdOffset
            return message
        }
        logger.info("guest RAM handed to uid \(peer.uid)", metadata: [
            "event": "guest_memory_handed_out", "peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)"])
        return ControlReply(.vmGuestMemory(reply), fds: [FileDescriptor(rawValue: copy)], closeFdsAfterSending: true)
    }

    private func refusal(_ error: VMStateError, _ what: String) -> ControlReply {
        let code: ColoErrorCode
        switch error {
        case .notRunning, .notPaused: code = .failedPrecondition
        case .devicesBusy: code = .unavailable
        case .badState: code = .invalidArgument
        case .kvm, .memory: code = .internal
        }
        logger.warning("\(what) refused: \(error)", metadata: ["event": "vm_state_request_refused", "request": "\(what)",
                                                                "error": "\(error)"])
        return .error(code, "\(error)")
    }
}

/// Why a handed-over file could not be read.
struct ReadFailure: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

