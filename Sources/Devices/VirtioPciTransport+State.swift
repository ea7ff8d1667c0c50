import ColoProtocol
import Foundation
import Glibc
import SystemPackage

/// Pausing, saving and loading a virtio device (checkpoints, migration).
extension VirtioPciTransport {
    /// Bytes of the legacy device-configuration window (0x14 to BAR end).
    static let deviceConfigurationWindow = Int(barSize) - Register.deviceConfiguration

    // MARK: Quiescing

    /// Stops serving the queues: no notification is taken and no backend
    /// read, except the completions of requests in flight.
    public func quiesce() {
        lock.withLock { quiesced = true }
    }

    /// True when quiesced and no request is left in flight: the device
    /// writes guest RAM no more.
    public var isQuiet: Bool {
        lock.withLock { quiesced && model.requestsInFlight == 0 }
    }

    /// Serves the queues again. With `recheckQueues` (after a state load:
    /// notifications the source took and did not serve are not in the
    /// state) every ready queue is served as if notified; a spurious
    /// notification costs a look at the ring.
    public func unquiesce(recheckQueues: Bool) {
        lock.withLock {
            quiesced = false
            if recheckQueues {
                for queue in state.queues.indices { notified(queue, onVcpuThread: false) }
            }
            finishOperation()
        }
    }

    /// While quiesced: only the backend of requests still in flight.
    var drainInterests: [PollInterest] {
        model.requestsInFlight > 0 ? model.backendInterests(device: VirtioDeviceAccess(transport: self, onVcpuThread: false)) : []
    }

    /// While quiesced: `fd` may be served only to finish requests in flight.
    func mayFinishInFlight(_ fd: FileDescriptor) -> Bool {
        model.requestsInFlight > 0 && !notifyEvents.contains(fd)
    }

    // MARK: Saved state

    /// The transport's registers, queues and PCI configuration, and what
    /// the device presents (features, configuration window).
    public func savedState(slot: Int) -> ColoVirtioSavedState {
        lock.withLock {
            var saved = ColoVirtioSavedState()
            saved.pciSlot = UInt32(slot)
            saved.deviceType = UInt32(model.virtioDeviceType)
            saved.pciConfig = Data(config.bytes)
            saved.driverFeatures = state.driverFeatures
            saved.status = UInt32(state.status)
            saved.queueSelect = UInt32(state.queueSelect)
            saved.interruptStatus = UInt32(state.interruptStatus)
            saved.queues = state.queues.map { queue in
                var message = ColoVirtqueueSavedState()
                message.size = UInt32(queue.size)
                message.pageFrame = queue.pageFrame
                message.nextAvailable = UInt32(queue.nextAvailable)
                message.nextUsed = UInt32(queue.nextUsed)
                return message
            }
            saved.failure = state.failure ?? ""
            saved.deviceFeatures = model.deviceFeatures
            saved.deviceConfig = Data(deviceConfiguration)
            return saved
        }
    }

    private var deviceConfiguration: [UInt8] {
        (0..<Self.deviceConfigurationWindow).map { model.configByte(at: $0) }
    }

    /// Why `saved` cannot be loaded into this device, or nil: another
    /// device type, other features or configuration (another MAC, another
    /// disk size), other queue sizes, values out of range.
    public func problem(loading saved: ColoVirtioSavedState, slot: Int) -> String? {
        lock.withLock {
            let name = "virtio device in slot \(slot)"
            guard saved.pciSlot == slot, saved.deviceType == model.virtioDeviceType else {
                return "\(name): saved as type \(saved.deviceType) in slot \(saved.pciSlot), here type \(model.virtioDeviceType)"
            }
            guard saved.deviceFeatures == model.deviceFeatures, saved.deviceConfig == Data(deviceConfiguration) else {
                return "\(name): the saved device offered other features or configuration (MAC, disk size) than this one"
            }
            guard saved.pciConfig.count == config.bytes.count else {
                return "\(name): PCI configuration of \(saved.pciConfig.count) bytes, not \(config.bytes.count)"
            }
            guard saved.queues.map(\.size) == state.queues.map({ UInt32($0.size) }) else {
                return "\(name): saved queue sizes \(saved.queues.map(\.size)) differ from \(state.queues.map(\.size))"
            }
            for queue in saved.queues where queue.nextAvailable > 0xFFFF || queue.nextUsed > 0xFFFF {
                return "\(name): queue index above 65535"
            }
            guard saved.status <= 0xFF, saved.interruptStatus <= 0x3, saved.queueSelect <= 0xFFFF,
                  saved.driverFeatures & ~model.deviceFeatures == 0 else {
                return "\(name): register value out of range"
            }
            return nil
        }
    }

    /// Takes `saved` (checked with `problem`): registers, queues, PCI
    /// configuration (the BAR decodes where the guest put it, with its
    /// notification eventfds) and the interrupt line as the ISR implies.
    /// Transient device state (a transmit waiting for room) is forgotten.
    public func load(_ saved: ColoVirtioSavedState) {
        lock.withLock {
            model.reset()
            config.bytes = [UInt8](saved.pciConfig)
            var loaded = VirtioTransportState(queueSizes: model.queueSizes)
            loaded.driverFeatures = saved.driverFeatures
            loaded.status = UInt8(saved.status)
            loaded.queueSelect = UInt16(saved.queueSelect)
            loaded.interruptStatus = UInt8(saved.interruptStatus)
            for (index, queue) in saved.queues.enumerated() {
                loaded.queues[index].pageFrame = queue.pageFrame
                loaded.queues[index].nextAvailable = UInt16(queue.nextAvailable)
                loaded.queues[index].nextUsed = UInt16(queue.nextUsed)
            }
            loaded.failure = saved.failure.isEmpty ? nil : saved.failure
            state = loaded
            decode(at: config.ioBarAddress(0))
            interrupt.set(high: false)
            lineHigh = false
            updateLine()
        }
    }
}
