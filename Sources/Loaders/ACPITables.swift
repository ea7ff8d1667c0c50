/// The ACPI tables a Linux guest needs to find its vCPUs, interrupt
/// controllers, PCI bus and power-off register (ACPI 6.5): RSDP -> XSDT
/// (and RSDT) -> FADT (-> FACS, DSDT) and MADT. Firmware's job on a PC;
/// vmmd has no firmware, so the Linux loader puts them into the reserved
/// BIOS area and points the boot parameters at the RSDP.
///
/// The DSDT holds the PCI root bridge (PNP0A03) with a _PRT routing each
/// slot's INTA# to its IRQ, and \_S5 so the kernel can power off through
/// PM1a_CNT. Debian's cloud kernel has no MP-table parser
/// (CONFIG_X86_MPPARSE unset): ACPI is the description it reads.
public struct ACPITables: Sendable {
    /// Where the tables start (the RSDP, inside the 0xE0000-0xFFFFF area
    /// the kernel also scans; 64-byte aligned, for the FACS).
    public let base: UInt64
    /// The tables, to be copied to `base`.
    public let bytes: [UInt8]

    public var rsdpAddress: UInt64 { base }

    static let oemID = Array("COLO  ".utf8), oemTableID = Array("COLOVMM ".utf8)
    static let creatorID = Array("COLO".utf8)
    static let headerLength = 36

    public init(_ platform: PlatformDescription, at base: UInt64) {
        precondition(base % 64 == 0, "ACPI tables start 64-byte aligned (the FACS is)")
        self.base = base
        var image = TableImage(base: base)
        let rsdp = image.reserve(36, alignment: 16)
        let facs = image.append(Self.facs(), alignment: 64)
        let dsdt = image.append(Self.dsdt(platform), alignment: 16)
        let fadt = image.append(Self.fadt(platform, facs: facs, dsdt: dsdt), alignment: 16)
        let madt = image.append(Self.madt(platform), alignment: 16)
        let rsdt = image.append(Self.table("RSDT", revision: 1, body: [fadt, madt].flatMap { littleEndian(UInt32($0)) }),
                                alignment: 16)
        let xsdt = image.append(Self.table("XSDT", revision: 1, body: [fadt, madt].flatMap { littleEndian($0) }),
                                alignment: 16)
        image.write(Self.rsdp(rsdt: rsdt, xsdt: xsdt), at: rsdp)
        bytes = image.bytes
    }

    /// The 36-byte header every table but the RSDP and FACS starts with,
    /// the body after it, and the checksum that makes all bytes sum to 0.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes = Array(signature.utf8)
        bytes += littleEndian(UInt32(headerLength + body.count))
        bytes += [revision, 0]
        bytes += oemID + oemTableID + littleEndian(UInt32(1)) + creatorID + littleEndian(UInt32(1))
        bytes += body
        bytes[9] = checksum(bytes)
        return bytes
    }

    /// The byte that makes `bytes` sum to zero (mod 256).
    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    /// RSDP revision 2 (ACPI 2.0+): both the RSDT and the XSDT.
    static func rsdp(rsdt: UInt64, xsdt: UInt64) -> [UInt8] {
        var bytes = Array("RSD PTR ".utf8) + [0] + oemID + [2] + littleEndian(UInt32(rsdt))
        bytes += littleEndian(UInt32(36)) + littleEndian(xsdt) + [0, 0, 0, 0]
        bytes[8] = checksum(bytes[0..<20])
        bytes[32] = checksum(bytes)
        return bytes
    }

    /// FACS: no waking vector (no sleep states but S5), no global lock use.
    static func facs() -> [UInt8] {
        var bytes = Array("FACS".utf8) + littleEndian(UInt32(64))
        bytes += [UInt8](repeating: 0, count: 56)
        bytes[32] = 2            // version
        return bytes
    }

    /// FADT revision 3 (244 bytes): SCI, PM1a event and control blocks, no
    /// PM timer or GPEs; boot architecture flags saying there is no 8042,
    /// VGA, MSI or CMOS RTC.
    static func fadt(_ platform: PlatformDescription, facs: UInt64, dsdt: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 244 - headerLength)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            body.replaceSubrange(offset - headerLength..<offset - headerLength + MemoryLayout<T>.size,
                                 with: littleEndian(value))
        }
        put(UInt32(facs), at: 36)
        put(UInt32(dsdt), at: 40)
        put(UInt16(PlatformDescription.sciIRQ), at: 46)
        put(UInt32(platform.powerControlPort - 4), at: 56)     // PM1a_EVT_BLK
        put(UInt32(platform.powerControlPort), at: 64)         // PM1a_CNT_BLK
        put(UInt8(4), at: 88)                                  // PM1_EVT_LEN
        put(UInt8(2), at: 89)                                  // PM1_CNT_LEN
        put(UInt16(0x0FFF), at: 96)                            // P_LVL2_LAT: no C2
        put(UInt16(0x0FFF), at: 98)                            // P_LVL3_LAT: no C3
        put(UInt16(FADTBootArchitecture.standard), at: 109)
        put(FADTFlags.standard, at: 112)
        put(facs, at: 132)                                     // X_FIRMWARE_CTRL
        put(dsdt, at: 140)                                     // X_DSDT
        return table("FACP", revision: 3, body: body)
    }

    enum FADTBootArchitecture {
        static let vgaNotPresent: UInt16 = 1 << 2, msiNotSupported: UInt16 = 1 << 3
        static let cmosRTCNotPresent: UInt16 = 1 << 5
        static let standard = vgaNotPresent | msiNotSupported | cmosRTCNotPresent
    }

    enum FADTFlags {
        static let wbinvd: UInt32 = 1 << 0, c1Supported: UInt32 = 1 << 2
        static let noFixedPowerButton: UInt32 = 1 << 4, noFixedSleepButton: UInt32 = 1 << 5
        static let noFixedRTCWake: UInt32 = 1 << 6
        static let standard = wbinvd | c1Supported | noFixedPowerButton | noFixedSleepButton | noFixedRTCWake
    }

    enum MADTEntry {
        static let localAPIC: UInt8 = 0, ioAPIC: UInt8 = 1, interruptOverride: UInt8 = 2, localAPICNMI: UInt8 = 4
    }

    /// MADT: one enabled local APIC per vCPU, the IOAPIC (GSI 0-23), the
    /// SCI level-triggered active-high, and NMI on every local APIC's
    /// LINT1. ISA IRQ 0 stays on GSI 0 (no override): vmmd keeps KVM's
    /// default routing, where the in-kernel PIT's GSI 0 is IOAPIC input 0
    /// (QEMU reroutes it to input 2 and declares that override).
    static func madt(_ platform: PlatformDescription) -> [UInt8] {
        var body = littleEndian(PlatformDescription.localAPICAddress) + littleEndian(UInt32(1))   // PCAT_COMPAT
        for vcpu in 0..<platform.vcpuCount {
            body += [MADTEntry.localAPIC, 8, UInt8(vcpu), UInt8(vcpu)] + littleEndian(UInt32(1))     // enabled
        }
        body += [MADTEntry.ioAPIC, 12, PlatformDescription.ioAPICID, 0]
            + littleEndian(PlatformDescription.ioAPICAddress) + littleEndian(UInt32(0))
        body += [MADTEntry.interruptOverride, 10, 0, PlatformDescription.sciIRQ]
            + littleEndian(UInt32(PlatformDescription.sciIRQ)) + littleEndian(UInt16(0x000D))  // level, high
        body += [MADTEntry.localAPICNMI, 6, 0xFF] + littleEndian(UInt16(0)) + [1]
        return table("APIC", revision: 3, body: body)
    }

    /// DSDT: \_SB.PCI0 (bus 0 through configuration mechanism #1) with its
    /// interrupt routing, and \_S5 for power-off.
    static func dsdt(_ platform: PlatformDescription) -> [UInt8] {
        let routes = platform.pciInterrupts.map { route in
            // Address 0xSSSSFFFF (any function of slot S), pin 0 (INTA#),
            // no link device (source 0), the GSI.
            AML.package([AML.dword(UInt32(route.slot) << 16 | 0xFFFF), AML.integer(0), AML.integer(0),
                         AML.integer(UInt64(route.irq))])
        }
        let root = AML.device("PCI0", [
            AML.named("_HID", AML.eisaID("PNP0A03")),
            AML.named("_UID", AML.integer(0)),
            AML.named("_ADR", AML.integer(0)),
            AML.named("_BBN", AML.integer(0)),
            AML.named("_PRT", AML.package(routes)),
        ])
        let aml = AML.scope("\\_SB", [root]) + AML.named("_S5", AML.package([0, 0, 0, 0].map { AML.integer($0) }))
        return table("DSDT", revision: 2, body: aml)
    }
}

/// Tables laid out one after another from a guest address.
struct TableImage {
    let base: UInt64
    var bytes: [UInt8] = []

    init(base: UInt64) {
        self.base = base
    }

    /// Room for `count` bytes, filled later; returns its guest address.
    mutating func reserve(_ count: Int, alignment: Int) -> UInt64 {
        append([UInt8](repeating: 0, count: count), alignment: alignment)
    }

    mutating func append(_ table: [UInt8], alignment: Int) -> UInt64 {
        let start = (bytes.count + alignment - 1) / alignment * alignment
        bytes += [UInt8](repeating: 0, count: start - bytes.count) + table
        return base + UInt64(start)
    }

    mutating func write(_ table: [UInt8], at address: UInt64) {
        let start = Int(address - base)
        bytes.replaceSubrange(start..<start + table.count, with: table)
    }
}
