import ControlSocket

/// A function on the PCI bus: its configuration space.
public protocol PciFunction: AnyObject, Sendable {
    func configRead(offset: Int, size: Int) -> UInt32
    func configWrite(offset: Int, size: Int, value: UInt32)
}

/// PCI bus 0 behind configuration mechanism #1 (address register at
/// 0xCF8, data window at 0xCFC-0xCFF), with single-function devices in
/// slots. An empty slot, another bus, another function number or the
/// enable bit clear read as all ones, as on hardware.
public final class PciBus: PortDevice, @unchecked Sendable {
    public static let base: UInt16 = 0xCF8
    public static let length: UInt16 = 8

    private let lock = ThreadLock()
    private var address: UInt32 = 0
    private var slots: [Int: any PciFunction] = [:]

    public init() {}

    /// Puts `function` in `slot` (0-31) as function 0.
    public func attach(_ function: any PciFunction, slot: Int) {
        precondition((0..<32).contains(slot) && slots[slot] == nil, "PCI slot \(slot) taken or invalid")
        lock.withLock { slots[slot] = function }
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        if offset < 4 {
            return offset == 0 && size == 4 ? lock.withLock { address } : allOnes(size)
        }
        guard let (function, register) = target(dataOffset: Int(offset) - 4) else { return allOnes(size) }
        return function.configRead(offset: register, size: size)
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset < 4 {
            // Only a 32-bit access at 0xCF8 is the address register.
            if offset == 0 && size == 4 { lock.withLock { address = value & 0x80FF_FFFC } }
            return
        }
        guard let (function, register) = target(dataOffset: Int(offset) - 4) else { return }
        function.configWrite(offset: register, size: size, value: value)
    }

    private func target(dataOffset: Int) -> (any PciFunction, Int)? {
        lock.withLock {
            let enabled = address & 0x8000_0000 != 0
            let bus = (address >> 16) & 0xFF, slot = Int((address >> 11) & 0x1F), function = (address >> 8) & 0x7
            guard enabled, bus == 0, function == 0, let device = slots[slot] else { return nil }
            return (device, Int(address & 0xFC) + dataOffset)
        }
    }
}

/// The host bridge in slot 0 (an i440FX's identity), which operating
/// systems look for before trusting configuration mechanism #1.
public final class PciHostBridge: PciFunction, @unchecked Sendable {
    private let space = PciConfigSpace(vendor: 0x8086, device: 0x1237, classCode: 0x06_0000, revision: 2)

    public init() {}

    public func configRead(offset: Int, size: Int) -> UInt32 {
        space.read(offset: offset, size: size)
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {}
}
