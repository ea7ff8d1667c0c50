internal import CSupport
import ControlSocket
import GuestMemory
import Glibc
import SystemPackage

/// Registers virtqueue notifications as KVM ioeventfds, so a guest's
/// QUEUE_NOTIFY write signals an eventfd inside the kernel instead of
/// exiting to user space. Implemented by the VM (KVM_IOEVENTFD).
public protocol NotifyEventRegistrar: Sendable {
    /// True when writes of `value` to `port` now signal `eventfd`.
    func attach(_ eventfd: FileDescriptor, port: UInt16, value: UInt16) -> Bool
    func detach(_ eventfd: FileDescriptor, port: UInt16, value: UInt16)
}

/// The transport's registers as plain data (what a snapshot saves).
public struct VirtioTransportState: Sendable, Equatable {
    public var driverFeatures: UInt32 = 0
    public var status: UInt8 = 0
    public var queueSelect: UInt16 = 0
    /// The ISR register: bit 0 a queue interrupt, bit 1 a configuration change.
    public var interruptStatus: UInt8 = 0
    public var queues: [Virtqueue]
    /// Why the device failed (DEVICE_NEEDS_RESET), until the driver resets it.
    public var failure: String?

    init(queueSizes: [UInt16]) {
        queues = queueSizes.map { Virtqueue(size: $0) }
    }
}

/// The legacy virtio PCI transport (virtio 0.9.5; "transitional" device IDs
/// 0x1000-0x103F): a PCI function whose I/O BAR 0 holds the virtio
/// registers, and INTx on the line firmware assigned, asserted while the
/// ISR register is non-zero and released when the driver reads it.
///
/// Register layout at BAR 0 (no MSI-X): 0x00 device features, 0x04 driver
/// features, 0x08 queue PFN, 0x0C queue size, 0x0E queue select, 0x10 queue
/// notify, 0x12 status, 0x13 ISR, 0x14 device configuration.
public final class VirtioPciTransport: PciFunction, PortDevice, EventSource, @unchecked Sendable {
    public static let barSize: UInt16 = 0x40

    enum Register {
        static let deviceFeatures = 0x00, driverFeatures = 0x04, queuePageFrame = 0x08, queueSize = 0x0C
        static let queueSelect = 0x0E, queueNotify = 0x10, status = 0x12, interruptStatus = 0x13
        static let deviceConfiguration = 0x14
    }

    public static let statusDriverOK: UInt8 = 4
    public static let statusNeedsReset: UInt8 = 0x40

    let lock = ThreadLock()
    let memory: GuestMemory
    let model: any VirtioDeviceModel
    var state: VirtioTransportState
    var config: PciConfigSpace
    let interrupt: any InterruptLine
    private let ports: PortBus
    private let registrar: (any NotifyEventRegistrar)?
    private let onFailure: @Sendable (String) -> Void
    private let wakeDeviceThread: @Sendable () -> Void
    /// Where BAR 0 decodes now (registered on the port bus), if anywhere.
    private var decodedBase: UInt16?
    /// One eventfd per queue, signalled by KVM on notifications.
    var notifyEvents: [FileDescriptor] = []
    private var notifyEventsAttached = false
    var lineHigh = false
    /// Paused (VirtioPciTransport+State.swift): the device thread leaves
    /// the queues and guest RAM alone except to finish requests in flight.
    var quiesced = false
    private var interruptOwed = false
    private var notificationsSeen: [UInt64]

    /// - Parameters:
    ///   - ioBase: where BAR 0 starts (firmware's assignment; the guest may move it).
    ///   - irq: the ISA IRQ written into the interrupt line register.
    ///   - registrar: ioeventfd registration, or nil to take notifications as exits.
    ///   - onFailure: told why, when the driver breaks the rules and the device fails.
    ///   - wakeDeviceThread: makes the device thread ask for interests again
    ///     (the notification eventfds moved).
    public init(model: any VirtioDeviceModel, memory: GuestMemory, ports: PortBus, ioBase: UInt16, irq: UInt8,
                interrupt: any InterruptLine, registrar: (any NotifyEventRegistrar)?,
                onFailure: @escaping @Sendable (String) -> Void,
                wakeDeviceThread: @escaping @Sendable () -> Void) {
        self.wakeDeviceThread = wakeDeviceThread
        self.model = model
        self.memory = memory
        self.ports = ports
        self.interrupt = interrupt
        self.registrar = registrar
        self.onFailure = onFailure
        state = VirtioTransportState(queueSizes: model.queueSizes)
        notificationsSeen = Array(repeating: 0, count: model.queueSizes.count)
        config = PciConfigSpace(vendor: 0x1AF4, device: model.pciDeviceID, classCode: model.pciClassCode,
                                subsystemVendor: 0x1AF4, subsystem: model.virtioDeviceType, interruptPin: 1)
        config.setIOBar(0, size: Self.barSize, address: ioBase)
        config.setInterruptLine(irq)
        if registrar != nil {
            for _ in model.queueSizes {
                let raw = colo_eventfd()
                if raw >= 0 { notifyEvents.append(FileDescriptor(rawValue: raw)) }
            }
            if notifyEvents.count != model.queueSizes.count {
                notifyEvents.forEach { try? $0.close() }
                notifyEvents = []
            }
        }
    }

    deinit {
        notifyEvents.forEach { try? $0.close() }
    }

    /// Removes the device's port window and notification eventfds and
    /// closes its backend (the VM ended).
    public func detach() {
        lock.withLock {
            decode(at: nil)
            model.release()
        }
    }

    /// Runs `body` with the device's lock held (to read a model's state).
    public func locked<T>(_ body: () -> T) -> T {
        lock.withLock { body() }
    }

    /// The transport registers now.
    public var snapshot: VirtioTransportState { lock.withLock { state } }

    /// Notifications taken per queue (as exits or eventfd signals).
    public var notificationCounts: [UInt64] { lock.withLock { notificationsSeen } }

    var isLive: Bool { state.status & Self.statusDriverOK != 0 && state.failure == nil }

    // MARK: PCI configuration

    public func configRead(offset: Int, size: Int) -> UInt32 {
        lock.withLock { config.read(offset: offset, size: size) }
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        lock.withLock {
            config.write(offset: offset, size: size, value: value)
            decode(at: config.ioBarAddress(0))
            updateLine()
        }
    }

    /// Moves the register window (and its notification eventfds) to
    /// `base`, or removes it.
    func decode(at base: UInt16?) {
        guard base != decodedBase else { return }
        defer { wakeDeviceThread() }
        if let old = decodedBase {
            ports.unregister(base: old, device: self)
            if notifyEventsAttached, let registrar {
                for (queue, event) in notifyEvents.enumerated() {
                    registrar.detach(event, port: old + UInt16(Register.queueNotify), value: UInt16(queue))
                }
            }
            notifyEventsAttached = false
        }
        decodedBase = nil
        guard let base, base != 0, ports.register(base: base, length: Self.barSize, device: self) else { return }
        decodedBase = base
        if let registrar, !notifyEvents.isEmpty {
            var attached = 0
            for (queue, event) in notifyEvents.enumerated() {
                guard registrar.attach(event, port: base + UInt16(Register.queueNotify), value: UInt16(queue)) else { break }
                attached += 1
            }
            if attached == notifyEvents.count {
                notifyEventsAttached = true
            } else {
                for (queue, event) in notifyEvents.prefix(attached).enumerated() {
                    registrar.detach(event, port: base + UInt16(Register.queueNotify), value: UInt16(queue))
                }
            }
        }
    }

    // MARK: Registers (BAR 0)

    public func read(offset: UInt16, size: Int) -> UInt32 {
        lock.withLock {
            let offset = Int(offset)
            if offset >= Register.deviceConfiguration {
                var value: UInt32 = 0
                for byte in 0..<size {
                    value |= UInt32(model.configByte(at: offset - Register.deviceConfiguration + byte)) << (byte * 8)
                }
                return value
            }
            if offset == Register.interruptStatus {
                let value = state.interruptStatus
                state.interruptStatus = 0
                updateLine()
                return UInt32(value)
            }
            var registers = [UInt8](repeating: 0, count: Register.deviceConfiguration)
            func put(_ value: UInt32, at position: Int, width: Int) {
                for byte in 0..<width { registers[position + byte] = UInt8(truncatingIfNeeded: value >> (byte * 8)) }
            }
            let queue = selectedQueue
            put(model.deviceFeatures, at: Register.deviceFeatures, width: 4)
            put(state.driverFeatures, at: Register.driverFeatures, width: 4)
            put(queue?.pageFrame ?? 0, at: Register.queuePageFrame, width: 4)
            put(UInt32(queue?.size ?? 0), at: Register.queueSize, width: 2)
            put(UInt32(state.queueSelect), at: Register.queueSelect, width: 2)
            put(UInt32(state.status), at: Register.status, width: 1)
            var value: UInt32 = 0
            for byte in 0..<size where offset + byte < registers.count {
                value |= UInt32(registers[offset + byte]) << (byte * 8)
            }
            return value
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        lock.withLock {
            switch (Int(offset), size) {
            case (Register.driverFeatures, 4):
                state.driverFeatures = value & model.deviceFeatures
            case (Register.queuePageFrame, 4):
                setPageFrame(value)
            case (Register.queueSelect, 2):
                state.queueSelect = UInt16(value)
            case (Register.queueNotify, 2):
                notified(Int(value), onVcpuThread: true)
            case (Register.status, 1):
                setStatus(UInt8(value))
            default:
                break          // read-only registers, device configuration, odd sizes
            }
            finishOperation()
        }
    }

    private var selectedQueue: Virtqueue? {
        Int(state.queueSelect) < state.queues.count ? state.queues[Int(state.queueSelect)] : nil
    }

    private func setPageFrame(_ frame: UInt32) {
        let index = Int(state.queueSelect)
        guard index < state.queues.count else { return }
        var queue = Virtqueue(size: state.queues[index].size)
        queue.pageFrame = frame
        state.queues[index] = queue
        if frame != 0 {
            do {
                try queue.validate(memory: memory)
            } catch {
                fail("queue \(index): \(error)")
            }
        }
    }

    private func setStatus(_ status: UInt8) {
        if status == 0 {
            reset()
            return
        }
        // The device owns DEVICE_NEEDS_RESET; the driver cannot clear it.
        state.status = status | (state.status & Self.statusNeedsReset)
        model.statusChanged(device: VirtioDeviceAccess(transport: self, onVcpuThread: true))
    }

    private func reset() {
        state = VirtioTransportState(queueSizes: model.queueSizes)
        model.reset()
        updateLine()
    }

    func notified(_ queue: Int, onVcpuThread: Bool) {
        guard queue < state.queues.count else { return }
        notificationsSeen[queue] += 1
        guard state.queues[queue].isReady, state.failure == nil else { return }
        model.queueNotified(queue, device: VirtioDeviceAccess(transport: self, onVcpuThread: onVcpuThread))
    }

    // MARK: Model services (lock held)

    func pop(_ queue: Int) -> DescriptorChain? {
        guard state.failure == nil, queue < state.queues.count, state.queues[queue].isReady else { return nil }
        do {
            return try state.queues[queue].pop(memory: memory)
        } catch {
            fail("queue \(queue): \(error)")
            return nil
        }
    }

    func complete(_ queue: Int, head: UInt16, length: UInt32) {
        guard state.failure == nil else { return }
        do {
            try state.queues[queue].push(head: head, length: length, memory: memory)
        } catch {
            fail("queue \(queue): \(error)")
            return
        }
        if state.queues[queue].driverWantsInterrupt(memory: memory) { interruptOwed = true }
    }

    /// DEVICE_NEEDS_RESET and a configuration interrupt; the device ignores
    /// the driver's queues until it resets the device.
    func fail(_ reason: String) {
        guard state.failure == nil else { return }
        state.failure = reason
        state.status |= Self.statusNeedsReset
        state.interruptStatus |= 0x2
        updateLine()
        onFailure(reason)
    }

    /// Raises the queue interrupt owed by completions of this operation.
    func finishOperation() {
        if interruptOwed {
            interruptOwed = false
            state.interruptStatus |= 0x1
        }
        updateLine()
    }

    func updateLine() {
        let asserted = state.interruptStatus != 0
        config.setInterruptStatus(asserted)
        let high = asserted && config.command & PciConfigSpace.commandInterruptDisable == 0
        if high != lineHigh {
            lineHigh = high
            interrupt.set(high: high)
        }
    }

    // MARK: Device thread

    public func interests() -> [PollInterest] {
        lock.withLock {
            if quiesced { return drainInterests }
            var interests = model.backendInterests(device: VirtioDeviceAccess(transport: self, onVcpuThread: false))
            if notifyEventsAttached {
                interests += notifyEvents.map { PollInterest(fd: $0, events: Int16(POLLIN)) }
            }
            return interests
        }
    }

    public func ready(fd: FileDescriptor, revents: Int16) {
        lock.withLock {
            if quiesced && !mayFinishInFlight(fd) { return }
            if let queue = notifyEvents.firstIndex(of: fd) {
                var count: UInt64 = 0
                _ = Glibc.read(fd.rawValue, &count, 8)
                notified(queue, onVcpuThread: false)
            } else {
                model.backendReady(fd: fd, revents: revents, device: VirtioDeviceAccess(transport: self, onVcpuThread: false))
            }
            finishOperation()
        }
    }
}
