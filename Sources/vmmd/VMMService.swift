import Durations
import ColoProtocol
import ControlSocket
import DaemonRuntime
import Devices
import Glibc
import KVM
import Logging
import SystemPackage
import VirtualMachine

/// vmmd's requests: create/start, stop, status, console attach, and pause,
/// resume, dirty log, state and RAM hand-off (VMMService+State.swift). One
/// VM at a time; after it ends (power-off, stop, failure) the daemon keeps
/// serving and a new one may be created.
final class VMMService: DaemonService, @unchecked Sendable {
    static let defaultMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    static let deviceEventLimit = 16

    private let kvm: KVMDevice
    let logger: Logger
    private let console: ConsoleHub
    private let notifyThroughEventFDs: Bool
    let dirtyLogMode: DirtyLogMode
    /// Peers that may have the guest RAM memfd (VmGuestMemoryRequest).
    let memoryUsers: Set<UInt32>
    let lock = ThreadLock()
    var vm: VirtualMachine?
    private var deviceEvents: [String] = []

    init(kvm: KVMDevice, logger: Logger, notifyThroughEventFDs: Bool, dirtyLogMode: DirtyLogMode,
         memoryUsers: Set<UInt32>) throws(Errno) {
        self.kvm = kvm
        self.logger = logger
        self.notifyThroughEventFDs = notifyThroughEventFDs
        self.dirtyLogMode = dirtyLogMode
        self.memoryUsers = memoryUsers
        console = try ConsoleHub(logger: logger)
    }

    var state: String {
        lock.withLock {
            guard let vm else { return "idle" }
            return vm.end != nil ? "ended" : vm.isPaused ? "paused" : "running"
        }
    }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        switch body {
        case .vmCreate(let request):
            return create(request.configuration, fds: context.fds)
        case .vmStop:
            context.fds.forEach { try? $0.close() }
            return stop()
        case .vmStatus:
            context.fds.forEach { try? $0.close() }
            return ControlReply(.vmStatus(lock.withLock { status() }))
        case .consoleAttach:
            context.fds.forEach { try? $0.close() }
            do {
                let fd = try console.attach()
                return ControlReply(.consoleAttached(ColoConsoleAttached()), fds: [fd], closeFdsAfterSending: true)
            } catch {
                return .error(.internal, "console socket: \(error)")
            }
        default:
            return handleStateRequest(body, context: context)
        }
    }

    // MARK: Create

    /// Creates and starts a VM; with `incoming`, creates it paused with
    /// nothing loaded, to receive RAM and state.
    func create(_ request: ColoVmConfiguration, fds: [FileDescriptor], incoming: Bool = false) -> ControlReply {
        // The VM keeps duplicates of what it needs: these are closed here.
        defer { fds.forEach { try? $0.close() } }
        let running = lock.withLock { vm.map { $0.end == nil && !$0.awaitsState } ?? false }
        guard !running else { return .error(.failedPrecondition, "a VM is running; stop it first") }
        let configuration: VirtualMachineConfiguration
        switch makeConfiguration(request, fds: fds, incoming: incoming) {
        case .success(let value): configuration = value
        case .failure(let error): return .error(error.code, error.message)
        }
        console.begin(serial: nil)
        let machine: VirtualMachine
        do {
            machine = try VirtualMachine(
                kvm: kvm, configuration: configuration,
                consoleOutput: { [console] byte in console.output(byte) },
                onDeviceEvent: { [weak self] event in self?.deviceEvent(event) },
                onEnd: { [weak self] end in self?.ended(end) })
        } catch {
            logger.error("VM creation failed: \(error)", metadata: ["event": "vm_create_failed", "error": "\(error)"])
            let code: ColoErrorCode
            switch error {
            case .kvm, .memory, .devices: code = .internal
            case .block: code = .unavailable
            case .invalidConfiguration, .loader: code = .invalidArgument
            }
            return .error(code, "\(error)")
        }
        console.begin(serial: machine.serial)
        lock.withLock {
            vm = machine
            deviceEvents.removeAll()
        }
        if incoming {
            // A VM that never ran pauses at once.
            _ = try? machine.pause()
        } else {
            machine.start()
        }
        logger.info(incoming ? "VM prepared for incoming state" : "VM started", metadata: [
            "event": incoming ? "vm_prepared_incoming" : "vm_started", "memory_mib": "\(configuration.memoryBytes >> 20)",
            "vcpus": "\(configuration.vcpuCount)", "command_line": "\(configuration.commandLine)",
            "net": "\(configuration.network != nil)", "block": "\(configuration.block != nil)",
        ])
        return ControlReply(.vmStatus(lock.withLock { status() }))
    }

    private func makeConfiguration(_ request: ColoVmConfiguration, fds: [FileDescriptor], incoming: Bool)
        -> Result<VirtualMachineConfiguration, Refusal> {
        var used: Set<UInt32> = []
        func fd(_ reference: ColoFdRef, _ what: String) -> Result<FileDescriptor, Refusal> {
            guard reference.index < fds.count else {
                return .failure(Refusal(.missingFd, "\(what) names fd \(reference.index); the request carries \(fds.count)"))
            }
            guard used.insert(reference.index).inserted else {
                return .failure(Refusal(.invalidArgument, "\(what) names fd \(reference.index), already used"))
            }
            return .success(fds[Int(reference.index)])
        }
        guard request.hasKernel || incoming else { return .failure(Refusal(.invalidArgument, "no kernel fd")) }
        guard request.memoryMib > 0, request.memoryMib <= VirtualMachineConfiguration.maximumMemoryBytes >> 20 else {
            return .failure(Refusal(.invalidArgument, "memory_mib \(request.memoryMib): give 2 to 1048576"))
        }
        func bootKernel() -> Result<VirtualMachineConfiguration.Kernel, Refusal> {
            let kernelFD: FileDescriptor
            switch fd(request.kernel, "kernel") {
            case .success(let value): kernelFD = value
            case .failure(let error): return .failure(error)
            }
            switch request.kernelFormat {
            case .multiboot:
                guard !request.hasInitrd else {
                    return .failure(Refusal(.invalidArgument, "an initrd is only loaded with a Linux bzImage"))
                }
                return .success(.multiboot(kernelFD))
            case .linuxBzimage:
                var initrd: FileDescriptor?
                if request.hasInitrd {
                    switch fd(request.initrd, "initrd") {
                    case .success(let value): initrd = value
                    case .failure(let error): return .failure(error)
                    }
                }
                return .success(.linux(kernelFD, initrd: initrd))
            default:
                return .failure(Refusal(.invalidArgument, "kernel_format must be MULTIBOOT or LINUX_BZIMAGE"))
            }
        }
        let kernel: VirtualMachineConfiguration.Kernel
        switch incoming ? .success(.incoming) : bootKernel() {
        case .success(let value): kernel = value
        case .failure(let error): return .failure(error)
        }
        var network: VirtualMachineConfiguration.Network?
        if request.hasNetFrames {
            let mac = request.macAddress.isEmpty ? Self.defaultMAC : Array(request.macAddress)
            guard mac.count == 6 else {
                return .failure(Refusal(.invalidArgument, "mac_address has \(mac.count) bytes, not 6"))
            }
            switch fd(request.netFrames, "net_frames") {
            case .success(let value): network = .init(frames: value, mac: mac)
            case .failure(let error): return .failure(error)
            }
        }
        var block: FileDescriptor?
        if request.hasBlock {
            switch fd(request.block, "block") {
            case .success(let value): block = value
            case .failure(let error): return .failure(error)
            }
        }
        var configuration = VirtualMachineConfiguration(
            memoryBytes: request.memoryMib << 20, vcpuCount: Int(max(request.vcpus, 1)), kernel: kernel,
            commandLine: request.commandLine, network: network, block: block,
            notifyThroughEventFDs: notifyThroughEventFDs)
        configuration.dirtyLogMode = dirtyLogMode
        return .success(configuration)
    }

    /// Why a request's configuration is refused.
    struct Refusal: Error {
        var code: ColoErrorCode
        var message: String

        init(_ code: ColoErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
    }

    // MARK: Stop, events

    private func stop() -> ControlReply {
        guard let vm = lock.withLock({ vm }), vm.end == nil else {
            return .error(.failedPrecondition, "no VM is running")
        }
        vm.stop()
        return ControlReply(.vmStatus(lock.withLock { status() }))
    }

    private func deviceEvent(_ event: String) {
        logger.warning("\(event)", metadata: ["event": "device_event"])
        lock.withLock {
            deviceEvents.append(event)
            if deviceEvents.count > Self.deviceEventLimit { deviceEvents.removeFirst() }
        }
    }

    private func ended(_ end: VirtualMachineEnd) {
        let uptime = lock.withLock { vm?.uptime }
        logger.info("VM ended: \(end)", metadata: [
            "event": "vm_ended", "reason": "\(end)",
            "uptime_ms": "\(uptime.map { $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000 } ?? 0)",
        ])
    }

    // MARK: Status

    /// With the lock held.
    func status() -> ColoVmStatus {
        var status = ColoVmStatus()
        guard let vm else {
            status.state = .none
            return status
        }
        let end = vm.end
        status.state = end != nil ? .ended : vm.isPaused ? .paused : .running
        status.endReason = end.map { "\($0)" } ?? ""
        if let uptime = vm.uptime {
            let (seconds, attoseconds) = uptime.components
            status.uptimeMs = UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        }
        status.memoryBytes = vm.memory.size
        status.vcpus = vm.vcpuStates.enumerated().map { id, vcpu in
            var message = ColoVcpuStatus()
            message.id = UInt32(id)
            message.state = vcpu.state.name
            message.exits = vcpu.exits.map { kind, count in
                var exit = ColoExitCount()
                exit.kind = kind.rawValue
                exit.count = count
                return exit
            }
            return message
        }
        let notifications = vm.notifications
        var transport = 0
        if let counters = vm.netCounters {
            var net = ColoNetDeviceStatus()
            net.framesToGuest = counters.framesToGuest
            net.framesFromGuest = counters.framesFromGuest
            net.framesTooLargeForGuest = counters.framesTooLargeForGuest
            net.framesDroppedFromGuest = counters.framesDroppedFromGuest
            net.notifications = notifications[transport]
            transport += 1
            status.net = net
        }
        if let counters = vm.blockCounters {
            var block = ColoBlockDeviceStatus()
            block.capacityBytes = vm.blockCapacity ?? 0
            block.reads = counters.reads
            block.writes = counters.writes
            block.flushes = counters.flushes
            block.bytesRead = counters.bytesRead
            block.bytesWritten = counters.bytesWritten
            block.failedRequests = counters.failed
            block.notifications = notifications[transport]
            status.block = block
        }
        status.deviceEvents = deviceEvents
        status.consoleBytes = console.bytesWritten
        return status
    }
}
