import ControlSocket

/// A device answering x86 port I/O in a window of ports.
public protocol PortDevice: AnyObject, Sendable {
    /// A read of `size` (1, 2 or 4) bytes at `offset` into the window.
    func read(offset: UInt16, size: Int) -> UInt32
    /// A write of `size` bytes at `offset` into the window.
    func write(offset: UInt16, size: Int, value: UInt32)
}

/// The I/O port address space: windows of ports, each answered by one
/// device. A port no device claims behaves as on a PC with nothing there:
/// reads float to all ones, writes vanish.
public final class PortBus: @unchecked Sendable {
    public struct Window: Sendable {
        public let base: UInt16
        public let length: UInt16
        public let device: any PortDevice

        func contains(_ port: UInt16) -> Bool {
            port >= base && UInt32(port) < UInt32(base) + UInt32(length)
        }
    }

    public enum Outcome: Sendable, Equatable {
        case handled
        /// No device at that port: the access was answered as an empty bus.
        case unclaimed
    }

    private let lock = ThreadLock()
    private var windows: [Window] = []

    public init() {}

    /// Claims [base, base+length) for `device`; overlapping an existing
    /// window is refused (returns false).
    @discardableResult
    public func register(base: UInt16, length: UInt16, device: any PortDevice) -> Bool {
        lock.withLock {
            let end = UInt32(base) + UInt32(length)
            guard length > 0, end <= 0x1_0000 else { return false }
            guard !windows.contains(where: { UInt32($0.base) < end && UInt32(base) < UInt32($0.base) + UInt32($0.length) }) else {
                return false
            }
            windows.append(Window(base: base, length: length, device: device))
            return true
        }
    }

    /// Releases the window starting at `base` that `device` holds.
    public func unregister(base: UInt16, device: any PortDevice) {
        lock.withLock {
            windows.removeAll { $0.base == base && $0.device === device }
        }
    }

    /// Lets go of every device, when the machine goes: a device that maps
    /// its own window (a PCI BAR) holds the bus, so the two would otherwise
    /// keep each other, and the guest RAM and fds behind them, alive.
    public func removeAll() {
        lock.withLock { windows.removeAll() }
    }

    private func window(for port: UInt16) -> Window? {
        lock.withLock { windows.first { $0.contains(port) } }
    }

    /// Reads `size` bytes from `port`.
    public func read(port: UInt16, size: Int) -> (value: UInt32, outcome: Outcome) {
        guard let window = window(for: port) else { return (allOnes(size), .unclaimed) }
        return (window.device.read(offset: port - window.base, size: size) & allOnes(size), .handled)
    }

    /// Writes `size` bytes to `port`.
    public func write(port: UInt16, size: Int, value: UInt32) -> Outcome {
        guard let window = window(for: port) else { return .unclaimed }
        window.device.write(offset: port - window.base, size: size, value: value & allOnes(size))
        return .handled
    }
}

/// The value of an empty bus for an access of `size` bytes.
public func allOnes(_ size: Int) -> UInt32 {
    size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << UInt32(size * 8)) - 1
}
