/// A type-0 PCI configuration header (256 bytes) with a per-byte mask of
/// what the guest may change, as plain data.
public struct PciConfigSpace: Sendable, Equatable {
    public internal(set) var bytes: [UInt8]
    private var writable: [UInt8]

    public enum Offset {
        public static let command = 0x04
        public static let bar0 = 0x10
        public static let interruptLine = 0x3C
        public static let interruptPin = 0x3D
    }

    public static let commandIOSpace: UInt16 = 0x0001
    public static let commandBusMaster: UInt16 = 0x0004
    public static let commandInterruptDisable: UInt16 = 0x0400

    public init(vendor: UInt16, device: UInt16, classCode: UInt32, revision: UInt8 = 0,
                subsystemVendor: UInt16 = 0, subsystem: UInt16 = 0, interruptPin: UInt8 = 0) {
        bytes = [UInt8](repeating: 0, count: 256)
        writable = [UInt8](repeating: 0, count: 256)
        put16(vendor, at: 0x00)
        put16(device, at: 0x02)
        bytes[0x08] = revision
        bytes[0x09] = UInt8(truncatingIfNeeded: classCode)
        bytes[0x0A] = UInt8(truncatingIfNeeded: classCode >> 8)
        bytes[0x0B] = UInt8(truncatingIfNeeded: classCode >> 16)
        put16(subsystemVendor, at: 0x2C)
        put16(subsystem, at: 0x2E)
        bytes[Offset.interruptPin] = interruptPin
        // Command: I/O space, memory space, bus master, INTx disable.
        writable[0x04] = 0x07
        writable[0x05] = 0x04
        writable[Offset.interruptLine] = 0xFF
    }

    /// Makes BAR `index` an I/O BAR of `size` bytes (a power of two, at
    /// least 4) at `address`. The guest may move it; sizing (writing all
    /// ones) reads back the size mask, as on hardware. I/O space is 64 KiB,
    /// so the upper 16 bits read as zero.
    public mutating func setIOBar(_ index: Int, size: UInt16, address: UInt16) {
        let offset = Offset.bar0 + index * 4
        let mask = UInt32(~(size - 1)) & 0xFFFC
        put32(UInt32(address) & mask | 1, at: offset)
        for byte in 0..<4 { writable[offset + byte] = UInt8(truncatingIfNeeded: mask >> (byte * 8)) }
    }

    /// The guest's interrupt line register (what firmware assigned).
    public mutating func setInterruptLine(_ line: UInt8) {
        bytes[Offset.interruptLine] = line
    }

    /// Reads `size` bytes at `offset` (wrapping within the header).
    public func read(offset: Int, size: Int) -> UInt32 {
        var value: UInt32 = 0
        for byte in 0..<size where offset + byte < 256 {
            value |= UInt32(bytes[offset + byte]) << (byte * 8)
        }
        return value
    }

    /// Writes the bits the mask allows.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        for byte in 0..<size where offset + byte < 256 {
            let index = offset + byte
            let new = UInt8(truncatingIfNeeded: value >> (byte * 8))
            bytes[index] = (bytes[index] & ~writable[index]) | (new & writable[index])
        }
    }

    public var command: UInt16 { UInt16(read(offset: Offset.command, size: 2)) }

    /// Where I/O BAR `index` decodes now, or nil while I/O space is off.
    public func ioBarAddress(_ index: Int) -> UInt16? {
        guard command & Self.commandIOSpace != 0 else { return nil }
        return UInt16(truncatingIfNeeded: read(offset: Offset.bar0 + index * 4, size: 4) & 0xFFFC)
    }

    /// The status register's interrupt-status bit (3), which the device
    /// keeps in step with its INTx output.
    public mutating func setInterruptStatus(_ asserted: Bool) {
        bytes[0x06] = asserted ? bytes[0x06] | 0x08 : bytes[0x06] & ~0x08
    }

    private mutating func put16(_ value: UInt16, at offset: Int) {
        bytes[offset] = UInt8(truncatingIfNeeded: value)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }

    private mutating func put32(_ value: UInt32, at offset: Int) {
        for byte in 0..<4 { bytes[offset + byte] = UInt8(truncatingIfNeeded: value >> (byte * 8)) }
    }
}
