import BlockProtocol
import ColoProtocol
import ControlSocket
import Devices
import Glibc
import GuestMemory
import KVM
import Loaders
import Synchronization
import SystemPackage

/// A running guest: KVM VM, guest RAM, vCPU threads, the device thread and
/// the PC platform devices.
///
/// Platform: RAM from 0 (and from 4 GiB past 3 GiB); the in-kernel 8259
/// pair with ELCR, IOAPIC, local APICs and 8254 PIT; COM1 (IRQ 4); PCI
/// bus 0 through mechanism #1 with a host bridge in slot 0, virtio-net in
/// slot 1 (I/O 0xC000, IRQ 10) and virtio-blk in slot 2 (I/O 0xC040, IRQ
/// 11); ACPI PM1a control at 0x604 for power-off. Any other port or
/// address reads as all ones and ignores writes.
public final class VirtualMachine: @unchecked Sendable {
    public static let netSlot = 1, blockSlot = 2
    public static let netIOBase: UInt16 = 0xC000, blockIOBase: UInt16 = 0xC040
    public static let netIRQ: UInt8 = 10, blockIRQ: UInt8 = 11
    static let tssAddress: UInt32 = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000
    static let blockAttachTimeout: Duration = .seconds(5)

    public let memory: GuestMemory
    public let configuration: VirtualMachineConfiguration
    let kvm: KVMVirtualMachine
    let vcpus: [VcpuRunner]
    private let ports = PortBus()
    public let serial: Serial8250
    let eventLoop: DeviceEventLoop
    let transports: [VirtioPciTransport]
    let net: (model: VirtioNet, transport: VirtioPciTransport)?
    let block: (model: VirtioBlock, transport: VirtioPciTransport)?
    let lifecycle = ThreadLock()
    /// Pausing and state transfer (Pause.swift, StateTransfer.swift).
    let pauseGate = PauseGate()
    let pauseState = PauseState()
    let kvmDevice: KVMDevice
    let dirtyLog: DirtyLogTracker
    var started: ContinuousClock.Instant?
    private var stoppedAt: ContinuousClock.Instant?
    private var endReason: VirtualMachineEnd?
    private var running = 0
    private let ended = DeviceSemaphore()
    private let onEnd: @Sendable (VirtualMachineEnd) -> Void

    /// Builds the VM and loads its kernel; nothing runs until `start`. The
    /// configuration's fds stay the caller's (the VM keeps duplicates).
    ///
    /// - Parameters:
    ///   - consoleOutput: every byte the guest writes to COM1 (vCPU thread).
    ///   - onDeviceEvent: a device failed or lost its backend (for the log).
    ///   - onEnd: the VM ended (on the last vCPU thread to stop).
    public init(kvm device: KVMDevice, configuration: VirtualMachineConfiguration,
                consoleOutput: @escaping @Sendable (UInt8) -> Void,
                onDeviceEvent: @escaping @Sendable (String) -> Void,
                onEnd: @escaping @Sendable (VirtualMachineEnd) -> Void) throws(VirtualMachineError) {
        self.configuration = configuration
        self.onEnd = onEnd
        kvmDevice = device
        let size = configuration.memoryBytes
        guard size >= VirtualMachineConfiguration.minimumMemoryBytes else {
            throw .invalidConfiguration("too little RAM: \(size) bytes; at least 2 MiB are needed")
        }
        guard size <= VirtualMachineConfiguration.maximumMemoryBytes, size % 4096 == 0 else {
            throw .invalidConfiguration("memory of \(size) bytes: must be a multiple of 4 KiB up to 1 TiB")
        }
        guard (1...VirtualMachineConfiguration.maximumVcpus).contains(configuration.vcpuCount) else {
            throw .invalidConfiguration("\(configuration.vcpuCount) vCPUs: 1 to \(VirtualMachineConfiguration.maximumVcpus)")
        }
        do {
            memory = try GuestMemory(size: size)
        } catch {
            throw .memory("\(error)")
        }
        let entry: BootEntry?
        do {
            switch configuration.kernel {
            case .incoming:
                entry = nil
            case .multiboot(let fd):
                entry = try MultibootLoader.load(try FileImage(fd: fd, what: "kernel"),
                                                 commandLine: configuration.commandLine, into: memory)
            case .linux(let fd, let initrdFD):
                let initrd = try initrdFD.map { fd throws(LoaderError) in try FileImage(fd: fd, what: "initrd") }
                entry = try LinuxLoader.load(try FileImage(fd: fd, what: "kernel"), initrd: initrd,
                                             commandLine: configuration.commandLine,
                                             platform: Self.platform(configuration), into: memory)
            }
        } catch {
            throw .loader(error)
        }
        do {
            kvm = try device.createVirtualMachine()
            try kvm.setIdentityMapAddress(Self.identityMapAddress)
            try kvm.setTSSAddress(Self.tssAddress)
            try kvm.createInterruptController()
            try kvm.createProgrammableIntervalTimer()
            for (slot, region) in memory.regions.enumerated() {
                try kvm.setMemoryRegion(slot: UInt32(slot), guestAddress: region.guestAddress, size: region.size,
                                        hostAddress: memory.hostAddress(of: region))
            }
            let supported = try device.supportedCPUID()
            var vcpus: [VcpuRunner] = []
            for id in 0..<UInt32(configuration.vcpuCount) {
                let vcpu = try kvm.createVcpu(id: id)
                try vcpu.setCPUID(X86Setup.cpuid(supported, vcpu: id))
                vcpus.append(VcpuRunner(vcpu: vcpu, gate: pauseGate))
            }
            if let entry { try X86Setup.apply(entry, to: vcpus[0].vcpu) }
            self.vcpus = vcpus
            dirtyLog = DirtyLogTracker(kvm: kvm, memory: memory, mode: configuration.dirtyLogMode)
        } catch {
            throw .kvm("\(error)")
        }
        do {
            eventLoop = try DeviceEventLoop()
        } catch {
            throw .devices("eventfd: \(error)")
        }
        let kvm = self.kvm
        serial = Serial8250(interrupt: KVMInterruptLine(vm: kvm, gsi: Serial8250.com1IRQ, vcpus: vcpus), output: consoleOutput)
        ports.register(base: Serial8250.com1Base, length: 8, device: serial)
        let pci = PciBus()
        pci.attach(PciHostBridge(), slot: 0)
        ports.register(base: PciBus.base, length: PciBus.length, device: pci)
        let registrar: (any NotifyEventRegistrar)? =
            configuration.notifyThroughEventFDs ? KVMNotifyRegistrar(vm: kvm) : nil
        var transports: [VirtioPciTransport] = []
        let loop = eventLoop
        if let network = configuration.network {
            let model = VirtioNet(mac: network.mac, backend: try Self.duplicate(network.frames, "net_frames"),
                                  interestsChanged: { loop.wake() }, onEvent: onDeviceEvent)
            let transport = VirtioPciTransport(
                model: model, memory: memory, ports: ports, ioBase: Self.netIOBase, irq: Self.netIRQ,
                interrupt: KVMInterruptLine(vm: kvm, gsi: UInt32(Self.netIRQ), vcpus: vcpus), registrar: registrar,
                onFailure: { onDeviceEvent("virtio-net failed: \($0)") }, wakeDeviceThread: { loop.wake() })
            pci.attach(transport, slot: Self.netSlot)
            transports.append(transport)
            net = (model, transport)
        } else {
            net = nil
        }
        if let blockFD = configuration.block {
            let channel = BlockChannel(socket: SeqpacketSocket(adopting: try Self.duplicate(blockFD, "block")))
            let attached: ColoBlockAttached
            do {
                attached = try channel.attach(memory: memory.memfd.fd, regions: memory.regions.map { region in
                    var message = ColoGuestMemoryRegion()
                    message.guestAddress = region.guestAddress
                    message.size = region.size
                    message.memfdOffset = region.memfdOffset
                    return message
                }, timeout: Self.blockAttachTimeout)
            } catch {
                channel.socket.close()
                throw .block(error)
            }
            guard attached.logicalBlockSize == 0 || attached.logicalBlockSize == 512 else {
                channel.socket.close()
                throw .block(.protocolViolation("logical block size \(attached.logicalBlockSize); only 512 is supported"))
            }
            let disk = BlockDisk(capacityBytes: attached.capacityBytes, readOnly: attached.readOnly,
                                 supportsFlush: attached.supportsFlush, serial: attached.serial)
            let model = VirtioBlock(disk: disk, channel: channel, onEvent: onDeviceEvent)
            let transport = VirtioPciTransport(
                model: model, memory: memory, ports: ports, ioBase: Self.blockIOBase, irq: Self.blockIRQ,
                interrupt: KVMInterruptLine(vm: kvm, gsi: UInt32(Self.blockIRQ), vcpus: vcpus), registrar: registrar,
                onFailure: { onDeviceEvent("virtio-blk failed: \($0)") }, wakeDeviceThread: { loop.wake() })
            pci.attach(transport, slot: Self.blockSlot)
            transports.append(transport)
            block = (model, transport)
        } else {
            block = nil
        }
        self.transports = transports
        let power = PowerControl { [weak self] in self?.end(.poweredOff) }
        ports.register(base: PowerControl.port, length: PowerControl.length, device: power)
    }

    /// What the Linux guest's ACPI tables describe: the vCPUs, the power
    /// register and the virtio devices this configuration gets.
    static func platform(_ configuration: VirtualMachineConfiguration) -> PlatformDescription {
        var interrupts: [PlatformDescription.PciInterrupt] = []
        if configuration.network != nil { interrupts.append(.init(slot: UInt8(netSlot), irq: netIRQ)) }
        if configuration.block != nil { interrupts.append(.init(slot: UInt8(blockSlot), irq: blockIRQ)) }
        return PlatformDescription(vcpuCount: configuration.vcpuCount, powerControlPort: PowerControl.port,
                                   pciInterrupts: interrupts)
    }

    /// The VM keeps its own copies of backend fds: the caller's stay the
    /// caller's, and each device closes its copy when it goes.
    private static func duplicate(_ fd: FileDescriptor, _ what: String) throws(VirtualMachineError) -> FileDescriptor {
        let copy = fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw .devices("\(what) fd: \(Errno(rawValue: errno))") }
        return FileDescriptor(rawValue: copy)
    }

    /// Starts the device thread and every vCPU.
    public func start() {
        let count = lifecycle.withLock { () -> Int in
            guard started == nil else { return 0 }
            started = .now
            running = vcpus.count
            return vcpus.count
        }
        guard count > 0 else { return }
        transports.forEach { eventLoop.add($0) }
        eventLoop.start(name: "vm-devices")
        for runner in vcpus {
            runner.start(handler: { [unowned self] exit, runner in handle(exit, runner) },
                         ended: { [unowned self] reason in vcpuEnded(reason) })
        }
    }

    deinit {
        // The device graph has cycles (a BAR maps itself on the bus the
        // transport holds): break them, so RAM, KVM fds and backend sockets
        // go with the machine.
        ports.removeAll()
    }

    /// Stops the VM (if it runs) and waits until every thread is done.
    public func stop() {
        let wasRunning = lifecycle.withLock { started != nil }
        end(.stopped)
        if wasRunning {
            ended.wait()
            ended.signal()
        }
    }

    /// Asks every vCPU to stop; the first reason given is the one kept.
    func end(_ reason: VirtualMachineEnd) {
        lifecycle.withLock {
            if endReason == nil { endReason = reason }
        }
        vcpus.forEach { $0.requestStop() }
    }

    private func vcpuEnded(_ reason: VirtualMachineEnd?) {
        if let reason { end(reason) }
        let last = lifecycle.withLock { () -> Bool in
            running -= 1
            if running == 0 { stoppedAt = .now }
            return running == 0
        }
        guard last else { return }
        eventLoop.stop()
        transports.forEach { $0.detach() }
        let reason = lifecycle.withLock { endReason ?? .stopped }
        onEnd(reason)
        ended.signal()
    }

    // MARK: Exits (on vCPU threads)

    private func handle(_ exit: VcpuExit, _ runner: VcpuRunner) -> Bool {
        switch exit {
        case .io(let access):
            runner.statistics.count(.io)
            for item in 0..<access.count {
                let data = access.data + item * access.size
                if access.isWrite {
                    let value: UInt32
                    switch access.size {
                    case 1: value = UInt32(data.load(as: UInt8.self))
                    case 2: value = UInt32(data.loadUnaligned(as: UInt16.self))
                    default: value = data.loadUnaligned(as: UInt32.self)
                    }
                    if ports.write(port: access.port, size: access.size, value: value) == .unclaimed {
                        runner.statistics.count(.unclaimedIO)
                    }
                } else {
                    let (value, outcome) = ports.read(port: access.port, size: access.size)
                    if outcome == .unclaimed { runner.statistics.count(.unclaimedIO) }
                    switch access.size {
                    case 1: data.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
                    case 2: data.storeBytes(of: UInt16(truncatingIfNeeded: value), as: UInt16.self)
                    default: data.storeBytes(of: value, as: UInt32.self)
                    }
                }
            }
            return true
        case .mmio(let access):
            runner.statistics.count(.mmio)
            runner.statistics.count(.unclaimedMMIO)
            if !access.isWrite {
                access.data.initializeMemory(as: UInt8.self, repeating: 0xFF, count: 8)
            }
            return true
        case .interrupted:
            runner.statistics.count(.interrupted)
            return true
        case .halt:
            // Only without an in-kernel LAPIC; ours handles HLT in KVM.
            runner.statistics.count(.halt)
            return true
        case .shutdown:
            runner.statistics.count(.shutdown)
            end(.reset)
            return false
        case .systemEvent(let type):
            runner.statistics.count(.systemEvent)
            end(type == 2 ? .reset : .poweredOff)
            return false
        case .failedEntry(let reason):
            runner.statistics.count(.failedEntry)
            end(.failed("KVM could not enter the guest (hardware reason 0x\(String(reason, radix: 16)))"))
            return false
        case .internalError(let suberror):
            runner.statistics.count(.internalError)
            end(.failed("KVM internal error \(suberror)"))
            return false
        case .other(let reason):
            runner.statistics.count(.other)
            end(.failed("unexpected KVM exit \(reason)"))
            return false
        }
    }

    // MARK: Status

    /// Time from `start` to now, or to the end; nil before the start.
    public var uptime: Duration? {
        lifecycle.withLock { started.map { (stoppedAt ?? .now) - $0 } }
    }

    /// How it ended, once it has.
    public var end: VirtualMachineEnd? {
        lifecycle.withLock { running == 0 && (started != nil || endReason != nil) ? endReason ?? .stopped : nil }
    }

    public var vcpuStates: [(state: VcpuState, exits: [(ExitStatistics.Kind, UInt64)])] {
        vcpus.map { ($0.state, $0.statistics.snapshot) }
    }

    public var netCounters: NetCounters? {
        guard let net else { return nil }
        return net.transport.locked { net.model.counters }
    }

    public var blockCapacity: UInt64? { block?.model.disk.capacityBytes }

    public var blockCounters: BlockCounters? {
        guard let block else { return nil }
        return block.transport.locked { block.model.counters }
    }

    /// Virtqueue notifications each device took (all queues).
    public var notifications: [UInt64] { transports.map { $0.notificationCounts.reduce(0, +) } }
}
