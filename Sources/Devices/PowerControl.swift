import ControlSocket

/// The ACPI PM1a control register at port 0x604, where QEMU's PIIX4 power
/// management block puts it (base 0x600): setting SLP_EN powers the
/// machine off, as QEMU treats any sleep type (the test guest writes
/// 0x2000). SCI_EN reads as set: the platform is in ACPI mode.
public final class PowerControl: PortDevice, @unchecked Sendable {
    public static let port: UInt16 = 0x604
    public static let length: UInt16 = 2
    static let sleepEnable: UInt32 = 1 << 13
    static let sciEnable: UInt32 = 1

    private let lock = ThreadLock()
    private var value: UInt32 = sciEnable
    private let powerOff: @Sendable () -> Void

    /// `powerOff` runs on the vCPU thread that wrote SLP_EN.
    public init(powerOff: @escaping @Sendable () -> Void) {
        self.powerOff = powerOff
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        lock.withLock { value >> (UInt32(offset) * 8) }
    }

    public func write(offset: UInt16, size: Int, value written: UInt32) {
        let register = offset == 0 && size >= 2 ? written & 0xFFFF : written << (UInt32(offset) * 8)
        let sleeping = lock.withLock {
            value = (register & ~Self.sleepEnable) | Self.sciEnable
            return register & Self.sleepEnable != 0
        }
        if sleeping { powerOff() }
    }
}
