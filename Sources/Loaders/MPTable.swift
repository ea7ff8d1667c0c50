/// The Intel MultiProcessor Specification 1.4 tables: the floating pointer
/// and the configuration table with one processor entry per vCPU, the PCI
/// and ISA buses, the IOAPIC, every ISA IRQ and PCI INTA# on its IOAPIC
/// input, and the local interrupts (ExtINT on LINT0, NMI on LINT1). For
/// kernels that read MP tables instead of ACPI (acpi=off, or built without
/// ACPI); Debian's cloud kernel reads the ACPI tables beside these.
public struct MPTable: Sendable {
    /// Where the floating pointer is (16-byte aligned, inside the BIOS area
    /// the kernel scans); the configuration table follows it.
    public let base: UInt64
    public let bytes: [UInt8]

    enum EntryType {
        static let processor: UInt8 = 0, bus: UInt8 = 1, ioAPIC: UInt8 = 2
        static let ioInterrupt: UInt8 = 3, localInterrupt: UInt8 = 4
    }

    enum InterruptType {
        static let vectored: UInt8 = 0, nmi: UInt8 = 1, extINT: UInt8 = 3
    }

    static let pciBus: UInt8 = 0, isaBus: UInt8 = 1
    static let specificationRevision: UInt8 = 4
    static let localAPICVersion: UInt8 = 0x14, ioAPICVersion: UInt8 = 0x11

    public init(_ platform: PlatformDescription, at base: UInt64) {
        precondition(base % 16 == 0, "the MP floating pointer is 16-byte aligned")
        self.base = base
        var entries: [[UInt8]] = []
        for vcpu in 0..<platform.vcpuCount {
            let flags: UInt8 = vcpu == 0 ? 0x3 : 0x1              // enabled, bootstrap processor
            entries.append([EntryType.processor, UInt8(vcpu), Self.localAPICVersion, flags]
                           + littleEndian(UInt32(0x0000_0600))          // family 6
                           + littleEndian(UInt32(0x0000_0201))          // FPU, APIC
                           + [UInt8](repeating: 0, count: 8))
        }
        entries.append([EntryType.bus, Self.pciBus] + Array("PCI   ".utf8))
        entries.append([EntryType.bus, Self.isaBus] + Array("ISA   ".utf8))
        entries.append([EntryType.ioAPIC, PlatformDescription.ioAPICID, Self.ioAPICVersion, 0x1]
                       + littleEndian(PlatformDescription.ioAPICAddress))
        func ioInterrupt(_ type: UInt8, flags: UInt16, bus: UInt8, source: UInt8, input: UInt8) -> [UInt8] {
            [EntryType.ioInterrupt, type] + littleEndian(flags) + [bus, source, PlatformDescription.ioAPICID, input]
        }
        // ISA IRQs on their own inputs (KVM's default routing: the PIT's
        // GSI 0 is input 0); the cascade IRQ 2 has none. The 8259 reaches
        // the CPUs through LINT0 (below), not through the IOAPIC.
        for irq in UInt8(0)..<16 where irq != 2 {
            entries.append(ioInterrupt(InterruptType.vectored, flags: 0, bus: Self.isaBus, source: irq, input: irq))
        }
        for route in platform.pciInterrupts {
            // PCI source IRQ: device number << 2 | pin (0 = INTA#); level,
            // active low (conforming to the PCI bus).
            entries.append(ioInterrupt(InterruptType.vectored, flags: 0, bus: Self.pciBus,
                                       source: route.slot << 2, input: route.irq))
        }
        entries.append([EntryType.localInterrupt, InterruptType.extINT] + littleEndian(UInt16(0))
                       + [Self.isaBus, 0, 0xFF, 0])
        entries.append([EntryType.localInterrupt, InterruptType.nmi] + littleEndian(UInt16(0))
                       + [Self.isaBus, 0, 0xFF, 1])

        let table = base + 16
        var configuration = Array("PCMP".utf8) + littleEndian(UInt16(44 + entries.reduce(0) { $0 + $1.count }))
        configuration += [Self.specificationRevision, 0] + Array("COLO    ".utf8) + Array("COLO VMM    ".utf8)
        configuration += littleEndian(UInt32(0)) + littleEndian(UInt16(0)) + littleEndian(UInt16(entries.count))
        configuration += littleEndian(PlatformDescription.localAPICAddress) + littleEndian(UInt16(0)) + [0, 0]
        configuration += entries.flatMap { $0 }
        configuration[7] = ACPITables.checksum(configuration)

        var pointer = Array("_MP_".utf8) + littleEndian(UInt32(table)) + [1, Self.specificationRevision, 0]
        pointer += [0, 0, 0, 0, 0]          // feature 1 = 0: the table is present; no IMCR (virtual wire)
        pointer[10] = ACPITables.checksum(pointer)
        bytes = pointer + configuration
    }
}
