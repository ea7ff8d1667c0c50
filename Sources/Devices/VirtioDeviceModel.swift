import GuestMemory
import SystemPackage

/// A virtio device type (net, blk) behind the legacy PCI transport. The
/// transport calls every method with the device's lock held, from a vCPU
/// thread (register accesses, notifications) or from the device thread
/// (backend fds), so a model's state needs no locking of its own.
public protocol VirtioDeviceModel: AnyObject, Sendable {
    /// The legacy (transitional) PCI device ID: 0x1000 + type - 1.
    var pciDeviceID: UInt16 { get }
    /// The virtio device type, also the PCI subsystem ID (1 net, 2 blk).
    var virtioDeviceType: UInt16 { get }
    var pciClassCode: UInt32 { get }
    /// Feature bits 0-31 offered to the driver.
    var deviceFeatures: UInt32 { get }
    /// The size of each queue, in queue order.
    var queueSizes: [UInt16] { get }
    /// A byte of the device-specific configuration (legacy offset 0x14+).
    func configByte(at offset: Int) -> UInt8
    /// The driver notified `queue`.
    func queueNotified(_ queue: Int, device: VirtioDeviceAccess)
    /// The driver wrote the status register (DRIVER_OK makes a device live).
    func statusChanged(device: VirtioDeviceAccess)
    /// The driver reset the device: forget requests in flight.
    func reset()
    /// The VM ended: close the backend, so its peer sees the end.
    func release()
    /// Requests a backend holds that will still write guest RAM (a paused
    /// VM waits for them before its state is saved).
    var requestsInFlight: Int { get }
    /// The backend fds to watch now.
    func backendInterests(device: VirtioDeviceAccess) -> [PollInterest]
    /// A backend fd is ready.
    func backendReady(fd: FileDescriptor, revents: Int16, device: VirtioDeviceAccess)
}

/// What a device model may do to its transport while it holds the lock:
/// take and return chains, see whether the driver has it running, fail.
public struct VirtioDeviceAccess {
    let transport: VirtioPciTransport
    /// True on a vCPU thread serving the guest's register access (the
    /// guest waits); false on the device thread.
    public let onVcpuThread: Bool

    public var memory: GuestMemory { transport.memory }

    /// DRIVER_OK is set and the device has not failed.
    public var isLive: Bool { transport.isLive }

    public var driverFeatures: UInt32 { transport.state.driverFeatures }

    /// The next chain on `queue`, or nil (none, queue not set up, device
    /// failed). A chain that breaks the rules fails the device.
    public func pop(_ queue: Int) -> DescriptorChain? {
        transport.pop(queue)
    }

    /// Gives back the chain just popped from `queue`, unused.
    public func undoPop(_ queue: Int) {
        transport.state.queues[queue].undoPop()
    }

    /// True when `queue` has chains waiting.
    public func hasAvailable(_ queue: Int) -> Bool {
        transport.isLive && transport.state.queues[queue].hasAvailable(memory: memory)
    }

    /// Returns a chain with `length` bytes written; the driver is
    /// interrupted once the current operation ends, unless it asked not to be.
    public func complete(_ queue: Int, head: UInt16, length: UInt32) {
        transport.complete(queue, head: head, length: length)
    }

    /// Fails the device (DEVICE_NEEDS_RESET) for `reason`.
    public func fail(_ reason: String) {
        transport.fail(reason)
    }
}

extension VirtioDeviceModel {
    /// Devices that answer everything at once hold nothing in flight.
    public var requestsInFlight: Int { 0 }
}
