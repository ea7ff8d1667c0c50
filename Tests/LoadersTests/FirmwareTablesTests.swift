import Foundation
import GuestMemory
@testable import Loaders
import XCTest

extension PlatformDescription {
    static let twoVcpus = PlatformDescription(vcpuCount: 2, powerControlPort: 0x604,
                                              pciInterrupts: [.init(slot: 1, irq: 10), .init(slot: 2, irq: 11)])
}

/// The tables as a guest's ACPI code finds them: the RSDP by its signature
/// on a 16-byte boundary in 0xE0000-0xFFFFF, the rest through the pointers,
/// every checksum checked on the way.
struct ParsedACPI {
    var rsdpAddress: UInt64
    var tables: [String: [UInt8]] = [:]
    var rsdtEntries: [UInt64] = []
    var xsdtEntries: [UInt64] = []

    init(_ memory: GuestMemory) throws {
        guard let rsdp = try stride(from: UInt64(0xE_0000), to: 0x10_0000, by: 16).first(where: {
            try memory.read(at: $0, count: 8) == Array("RSD PTR ".utf8)
        }) else { throw ParseError("no RSDP in 0xE0000-0xFFFFF") }
        rsdpAddress = rsdp
        let pointer = try memory.read(at: rsdp, count: 36)
        guard sum(pointer.prefix(20)) == 0 else { throw ParseError("RSDP checksum (first 20 bytes)") }
        guard sum(pointer) == 0, pointer[15] == 2, pointer.get(UInt32.self, at: 20) == 36 else {
            throw ParseError("RSDP 2.0 extended checksum, revision or length")
        }
        let rsdt = try Self.table(at: UInt64(pointer.get(UInt32.self, at: 16)), memory)
        let xsdt = try Self.table(at: pointer.get(UInt64.self, at: 24), memory)
        guard Self.signature(rsdt) == "RSDT", Self.signature(xsdt) == "XSDT" else { throw ParseError("RSDT/XSDT") }
        rsdtEntries = stride(from: 36, to: rsdt.count, by: 4).map { UInt64(rsdt.get(UInt32.self, at: $0)) }
        xsdtEntries = stride(from: 36, to: xsdt.count, by: 8).map { xsdt.get(UInt64.self, at: $0) }
        for address in xsdtEntries {
            let table = try Self.table(at: address, memory)
            tables[Self.signature(table)] = table
        }
        if let fadt = tables["FACP"] {
            tables["DSDT"] = try Self.table(at: fadt.get(UInt64.self, at: 140), memory)
            let facs = UInt64(fadt.get(UInt32.self, at: 36))
            guard facs % 64 == 0 else { throw ParseError("FACS not 64-byte aligned") }
            tables["FACS"] = try memory.read(at: facs, count: 64)
        }
    }

    static func table(at address: UInt64, _ memory: GuestMemory) throws -> [UInt8] {
        let length = Int(try memory.load(UInt32.self, at: address + 4))
        guard length >= 36 else { throw ParseError("table at \(address) of \(length) bytes") }
        let bytes = try memory.read(at: address, count: length)
        guard sum(bytes) == 0 else { throw ParseError("\(signature(bytes)) checksum") }
        return bytes
    }

    static func signature(_ table: [UInt8]) -> String {
        String(decoding: table.prefix(4), as: UTF8.self)
    }

    struct ParseError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}

private func sum(_ bytes: some Sequence<UInt8>) -> UInt8 {
    bytes.reduce(0, &+)
}

/// MADT entries as (type, bytes of the entry).
private func madtEntries(_ madt: [UInt8]) -> [(UInt8, [UInt8])] {
    var entries: [(UInt8, [UInt8])] = []
    var offset = 44
    while offset + 2 <= madt.count {
        let length = Int(madt[offset + 1])
        guard length >= 2, offset + length <= madt.count else { break }
        entries.append((madt[offset], Array(madt[offset..<offset + length])))
        offset += length
    }
    XCTAssertEqual(offset, madt.count, "MADT entries fill the table exactly")
    return entries
}

final class ACPITablesTests: XCTestCase {
    func load(_ platform: PlatformDescription) throws -> (GuestMemory, ParsedACPI, [UInt8]) {
        let memory = try GuestMemory(size: 64 << 20)
        _ = try LinuxLoader.load(ByteImage(SyntheticBzImage().bytes), initrd: Optional<ByteImage>.none,
                                 commandLine: "", platform: platform, into: memory)
        return (memory, try ParsedACPI(memory), try memory.read(at: 0x7000, count: 4096))
    }

    func testTablesParseBackWithOneLocalAPICPerVcpu() throws {
        for count in [1, 2, 7, 64] {
            let platform = PlatformDescription(vcpuCount: count, powerControlPort: 0x604,
                                               pciInterrupts: PlatformDescription.twoVcpus.pciInterrupts)
            let (_, acpi, params) = try load(platform)
            XCTAssertEqual(params.get(UInt64.self, at: 0x070), acpi.rsdpAddress, "boot_params.acpi_rsdp_addr")
            XCTAssertEqual(acpi.rsdpAddress, 0xF_0000)
            XCTAssertEqual(acpi.rsdtEntries, acpi.xsdtEntries, "RSDT and XSDT list the same tables")
            XCTAssertEqual(Set(acpi.tables.keys), ["FACP", "APIC", "DSDT", "FACS"])

            let entries = madtEntries(try XCTUnwrap(acpi.tables["APIC"]))
            let processors = entries.filter { $0.0 == 0 }.map { $0.1 }
            XCTAssertEqual(processors.count, count)
            XCTAssertEqual(processors.map { $0[2] }, (0..<count).map { UInt8($0) }, "processor UIDs")
            XCTAssertEqual(processors.map { $0[3] }, (0..<count).map { UInt8($0) }, "APIC IDs = vCPU indexes")
            XCTAssertTrue(processors.allSatisfy { $0.get(UInt32.self, at: 4) == 1 }, "enabled")
            let ioAPICs = entries.filter { $0.0 == 1 }.map { $0.1 }
            XCTAssertEqual(ioAPICs.count, 1)
            XCTAssertEqual(ioAPICs.first?.get(UInt32.self, at: 4), 0xFEC0_0000)
            XCTAssertEqual(ioAPICs.first?.get(UInt32.self, at: 8), 0, "GSI base")
            let overrides = entries.filter { $0.0 == 2 }.map { ($0.1[3], $0.1.get(UInt32.self, at: 4), $0.1.get(UInt16.self, at: 8)) }
            XCTAssertEqual(overrides.map { $0.0 }, [9], "only the SCI: the PIT stays on GSI 0 (KVM's routing)")
            XCTAssertEqual(overrides.map { $0.1 }, [9])
            XCTAssertEqual(overrides.map { $0.2 }, [0x000D], "level, active high")
            XCTAssertEqual(entries.filter { $0.0 == 4 }.count, 1, "LINT1 NMI")
        }
    }

    func testFADTPointsAtFACSDSDTAndThePowerRegister() throws {
        let (_, acpi, _) = try load(.twoVcpus)
        let fadt = try XCTUnwrap(acpi.tables["FACP"])
        XCTAssertEqual(fadt.count, 244)
        XCTAssertEqual(fadt[8], 3, "revision")
        XCTAssertEqual(UInt64(fadt.get(UInt32.self, at: 40)), fadt.get(UInt64.self, at: 140), "DSDT = X_DSDT")
        XCTAssertEqual(fadt.get(UInt16.self, at: 46), 9, "SCI_INT")
        XCTAssertEqual(fadt.get(UInt32.self, at: 56), 0x600, "PM1a_EVT_BLK")
        XCTAssertEqual(fadt.get(UInt32.self, at: 64), 0x604, "PM1a_CNT_BLK")
        XCTAssertEqual(fadt[88], 4)
        XCTAssertEqual(fadt[89], 2)
        XCTAssertEqual(fadt.get(UInt16.self, at: 109) & 0x2, 0, "no 8042")
        let facs = try XCTUnwrap(acpi.tables["FACS"])
        XCTAssertEqual(Array(facs.prefix(4)), Array("FACS".utf8))
        XCTAssertEqual(facs.get(UInt32.self, at: 4), 64)
    }

    func testDSDTDescribesThePCIRootRoutingAndS5() throws {
        let (_, acpi, _) = try load(.twoVcpus)
        let dsdt = try XCTUnwrap(acpi.tables["DSDT"])
        let aml = Array(dsdt.dropFirst(36))
        // Scope(\_SB) { Device(PCI0) { Name(_HID, EisaId("PNP0A03")) ...
        XCTAssertEqual(aml.first, 0x10)
        XCTAssertTrue(aml.contains(subsequence: [0x5B, 0x82]), "DeviceOp")
        XCTAssertTrue(aml.contains(subsequence: Array("PCI0".utf8)))
        XCTAssertTrue(aml.contains(subsequence: [0x08] + Array("_HID".utf8) + [0x0C, 0x41, 0xD0, 0x0A, 0x03]),
                      "EisaId(PNP0A03) = 0x030AD041")
        // _PRT: Package(2) { Package(4) { 0x0001FFFF, 0, 0, 10 }, Package(4) { 0x0002FFFF, 0, 0, 11 } }
        let route1: [UInt8] = [0x12, 0x0B, 0x04, 0x0C, 0xFF, 0xFF, 0x01, 0x00, 0x00, 0x00, 0x0A, 0x0A]
        let route2: [UInt8] = [0x12, 0x0B, 0x04, 0x0C, 0xFF, 0xFF, 0x02, 0x00, 0x00, 0x00, 0x0A, 0x0B]
        XCTAssertTrue(aml.contains(subsequence: [0x08] + Array("_PRT".utf8) + [0x12, 0x1A, 0x02] + route1 + route2))
        XCTAssertTrue(aml.contains(subsequence: [0x08] + Array("_S5_".utf8) + [0x12, 0x06, 0x04, 0, 0, 0, 0]))
        // The scope's PkgLength covers exactly the rest up to Name(_S5_).
        let scopeEnd = 1 + Int(aml[1] & 0x0F) + Int(aml[2]) << 4
        XCTAssertEqual(aml[1] >> 6, 1, "two-byte PkgLength")
        XCTAssertEqual(Array(aml[scopeEnd..<scopeEnd + 5]), [0x08] + Array("_S5_".utf8))
    }

    func testPackageLengthEncodings() {
        XCTAssertEqual(AML.packageLength(0), [1])
        XCTAssertEqual(AML.packageLength(62), [63])
        XCTAssertEqual(AML.packageLength(63), [0x40 | 1, 4], "65 = 0x41 in two bytes")
        XCTAssertEqual(AML.packageLength(0xFFD), [0x40 | 0xF, 0xFF])
        XCTAssertEqual(AML.packageLength(0xFFE), [0x80 | 1, 0, 1], "0x1001 needs three bytes")
        XCTAssertEqual(AML.integer(0), [0])
        XCTAssertEqual(AML.integer(1), [1])
        XCTAssertEqual(AML.integer(0x1234), [0x0B, 0x34, 0x12])
        XCTAssertEqual(AML.name("\\_SB"), [0x5C, 0x5F, 0x53, 0x42, 0x5F])
    }

    /// ACPICA's disassembler reads every table without complaint (needs
    /// iasl: Debian's acpica-tools, in scripts/debian-packages.txt).
    func testIASLDisassemblesEveryTable() throws {
        let iasl = "/usr/bin/iasl"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: iasl), "iasl not installed (acpica-tools)")
        let (_, acpi, _) = try load(.twoVcpus)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("acpi-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for name in ["DSDT", "FACP", "APIC"] {
            let file = directory.appendingPathComponent("\(name).dat")
            try Data(try XCTUnwrap(acpi.tables[name])).write(to: file)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: iasl)
            process.arguments = ["-d", file.path]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            XCTAssertEqual(process.terminationStatus, 0, "iasl -d \(name)")
            let listing = try String(contentsOf: directory.appendingPathComponent("\(name).dsl"), encoding: .utf8)
            XCTAssertFalse(listing.contains("Error"), listing)
            switch name {
            case "DSDT":
                for text in ["Device (PCI0)", "EisaId (\"PNP0A03\")", "Name (_PRT, Package (0x02)", "0x0002FFFF",
                             "Name (_S5, Package (0x04)"] {
                    XCTAssertTrue(listing.contains(text), "\(text) in\n\(listing)")
                }
            case "APIC":
                XCTAssertEqual(listing.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count - 1, 2,
                               listing)
            default:
                XCTAssertTrue(listing.contains("PM1A Control Block Address : 00000604"), listing)
            }
        }
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence: [UInt8]) -> Bool {
        guard subsequence.count <= count else { return false }
        return (0...(count - subsequence.count)).contains { Array(self[$0..<$0 + subsequence.count]) == subsequence }
    }
}

final class MPTableTests: XCTestCase {
    /// Found as Linux's smp_scan_config does: "_MP_" on a 16-byte boundary
    /// in 0xF0000-0xFFFFF whose 16 bytes sum to 0.
    func testFloatingPointerAndConfigurationTableParseBack() throws {
        for count in [1, 3, 64] {
            let memory = try GuestMemory(size: 64 << 20)
            let platform = PlatformDescription(vcpuCount: count, powerControlPort: 0x604,
                                               pciInterrupts: PlatformDescription.twoVcpus.pciInterrupts)
            _ = try LinuxLoader.load(ByteImage(SyntheticBzImage().bytes), initrd: Optional<ByteImage>.none,
                                     commandLine: "", platform: platform, into: memory)
            let acpi = try ParsedACPI(memory)
            let pointerAddress = try XCTUnwrap(try stride(from: UInt64(0xF_0000), to: 0x10_0000, by: 16).first {
                try memory.read(at: $0, count: 4) == Array("_MP_".utf8)
            })
            let pointer = try memory.read(at: pointerAddress, count: 16)
            XCTAssertEqual(pointer.reduce(0, &+), 0, "floating pointer checksum")
            XCTAssertEqual(pointer[8], 1, "length in 16-byte units")
            XCTAssertEqual(pointer[9], 4, "MP 1.4")
            XCTAssertEqual(pointer[11], 0, "a configuration table, not a default configuration")
            XCTAssertGreaterThanOrEqual(pointerAddress, acpi.rsdpAddress + UInt64(ACPITables(platform, at: 0xF_0000).bytes.count),
                                        "after the ACPI tables")

            let tableAddress = UInt64(pointer.get(UInt32.self, at: 4))
            let length = Int(try memory.load(UInt16.self, at: tableAddress + 4))
            let table = try memory.read(at: tableAddress, count: length)
            XCTAssertEqual(Array(table.prefix(4)), Array("PCMP".utf8))
            XCTAssertEqual(table.reduce(0, &+), 0, "configuration table checksum")
            XCTAssertEqual(table.get(UInt32.self, at: 36), 0xFEE0_0000)
            var entries: [[UInt8]] = []
            var offset = 44
            while offset < table.count {
                let size = table[offset] == 0 ? 20 : 8
                entries.append(Array(table[offset..<offset + size]))
                offset += size
            }
            XCTAssertEqual(offset, table.count)
            XCTAssertEqual(entries.count, Int(table.get(UInt16.self, at: 34)), "entry count")
            let processors = entries.filter { $0[0] == 0 }
            XCTAssertEqual(processors.map { $0[1] }, (0..<count).map { UInt8($0) }, "APIC IDs")
            XCTAssertEqual(processors.map { $0[3] }, [3] + [UInt8](repeating: 1, count: count - 1), "enabled; BSP first")
            XCTAssertEqual(entries.filter { $0[0] == 1 }.map { String(decoding: $0[2..<8], as: UTF8.self) },
                           ["PCI   ", "ISA   "])
            let ioAPIC = try XCTUnwrap(entries.first { $0[0] == 2 })
            XCTAssertEqual(ioAPIC.get(UInt32.self, at: 4), 0xFEC0_0000)
            let interrupts = entries.filter { $0[0] == 3 }
            let isa = interrupts.filter { $0[4] == 1 }.map { ($0[5], $0[7]) }
            XCTAssertEqual(isa.map { $0.0 }, [0, 1] + Array(3..<16), "every ISA IRQ but the cascade")
            XCTAssertTrue(isa.allSatisfy { $0.0 == $0.1 }, "on their own IOAPIC inputs")
            let pci = interrupts.filter { $0[4] == 0 }.map { [$0[5], $0[7]] }
            XCTAssertEqual(pci, [[1 << 2, 10], [2 << 2, 11]], "slot << 2 | INTA# on the slot's IRQ")
            XCTAssertEqual(entries.filter { $0[0] == 4 }.map { [$0[1], $0[6], $0[7]] }, [[3, 0xFF, 0], [1, 0xFF, 1]],
                           "ExtINT on LINT0, NMI on LINT1 of every CPU")
        }
    }
}
