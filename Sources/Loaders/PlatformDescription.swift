/// The machine as a guest's firmware tables describe it: vCPUs (local APIC
/// ID = vCPU index, as KVM numbers them), KVM's in-kernel interrupt
/// controllers at their PC addresses, the ACPI power-management block and
/// the PCI slots' INTA# lines. vmmd builds it from the VM it made, so the
/// tables match the devices the guest will find.
public struct PlatformDescription: Sendable, Equatable {
    /// A PCI device on bus 0 whose INTA# is wired to `irq` (an ISA IRQ,
    /// which is also its IOAPIC input).
    public struct PciInterrupt: Sendable, Equatable {
        public var slot: UInt8
        public var irq: UInt8

        public init(slot: UInt8, irq: UInt8) {
            self.slot = slot
            self.irq = irq
        }
    }

    public static let localAPICAddress: UInt32 = 0xFEE0_0000
    public static let ioAPICAddress: UInt32 = 0xFEC0_0000
    /// KVM's in-kernel IOAPIC resets with ID 0.
    public static let ioAPICID: UInt8 = 0
    /// KVM's in-kernel IOAPIC has 24 inputs.
    public static let ioAPICInputs: UInt8 = 24
    /// The SCI: never raised (no power button or GPE), declared as
    /// firmware must.
    public static let sciIRQ: UInt8 = 9

    public var vcpuCount: Int
    /// The PM1a control register (SLP_TYP/SLP_EN); the event block is the
    /// 4 bytes before it, as on QEMU's PIIX4 (base 0x600).
    public var powerControlPort: UInt16
    public var pciInterrupts: [PciInterrupt]

    public init(vcpuCount: Int, powerControlPort: UInt16, pciInterrupts: [PciInterrupt]) {
        self.vcpuCount = vcpuCount
        self.powerControlPort = powerControlPort
        self.pciInterrupts = pciInterrupts
    }
}
