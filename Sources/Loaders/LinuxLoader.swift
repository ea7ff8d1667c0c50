import GuestMemory

/// Loads a Linux bzImage with the x86 64-bit boot protocol
/// (Documentation/arch/x86/boot.rst): the protected-mode kernel at its
/// preferred address, the boot parameters ("zero page") with the setup
/// header copied from the image, an e820 map, the command line and an
/// optional initramfs; entry in long mode at the kernel's 64-bit entry
/// point with an identity map of the first 4 GiB (2 MiB pages: only on
/// hardware KVM, whose guests Linux is; this machine's emulated KVM loses
/// writes through 2 MiB pages, see DESIGN.md section 9).
///
/// Guest-physical layout below 1 MiB, all inside usable low RAM:
///
///     0x0500  GDT (null, null, 64-bit code 0x10, data 0x18)
///     0x7000  boot parameters (4 KiB)
///     0x9000  PML4, 0xA000 PDPT, 0xB000-0xEFFF four page directories
///     0x20000 command line (up to 64 KiB)
///
/// and the ACPI tables (ACPITables.swift) then the MP tables (MPTable.swift)
/// from 0xF0000, in the BIOS area the e820 map reserves.
public enum LinuxLoader {
    static let gdtAddress: UInt64 = 0x500
    static let bootParamsAddress: UInt64 = 0x7000
    static let pageTableRoot: UInt64 = 0x9000
    static let commandLineAddress: UInt64 = 0x2_0000
    static let commandLineArea = 0x1_0000
    /// The reserved BIOS area (MemoryMap): 64 KiB from here, where
    /// kernels look for the ACPI RSDP and the MP floating pointer.
    static let biosTablesAddress: UInt64 = 0xF_0000
    static let biosTablesArea = 0x1_0000
    static let codeSelector: UInt16 = 0x10
    static let dataSelector: UInt16 = 0x18

    /// The oldest protocol with xloadflags (2.12), which says whether the
    /// kernel has a 64-bit entry point.
    static let minimumProtocol: UInt16 = 0x020C

    // Setup header fields (offsets in the image and in the zero page).
    enum Field {
        static let setupSectors = 0x1F1
        static let sysSize = 0x1F4
        static let bootFlag = 0x1FE
        static let jump = 0x200
        static let headerMagic = 0x202
        static let version = 0x206
        static let typeOfLoader = 0x210
        static let loadFlags = 0x211
        static let ramdiskImage = 0x218
        static let ramdiskSize = 0x21C
        static let commandLinePointer = 0x228
        static let initrdAddressMax = 0x22C
        static let kernelAlignment = 0x230
        static let relocatable = 0x234
        static let xloadflags = 0x236
        static let commandLineSize = 0x238
        static let preferredAddress = 0x258
        static let initSize = 0x260
        // Boot parameters outside the setup header.
        static let acpiRSDPAddress = 0x070
        static let e820Count = 0x1E8
        static let e820Table = 0x2D0
    }

    static let e820MaxEntries = 128

    /// Loads `kernel` (and `initrd`) into `memory`, with ACPI tables
    /// describing `platform`.
    public static func load(_ kernel: some ImageSource, initrd: (some ImageSource)?, commandLine: String,
                            platform: PlatformDescription, into memory: GuestMemory) throws(LoaderError) -> BootEntry {
        let map = try MemoryMap(memory)
        let header = try SetupHeader(kernel)
        let commandLineBytes = Array(commandLine.utf8)
        let limit = min(Int(header.commandLineSize), commandLineArea - 1)
        guard commandLineBytes.count <= limit else {
            throw .commandLineTooLong(length: commandLineBytes.count, limit: limit)
        }
        let loadAddress = try placeKernel(header, map: map)
        try kernel.load(at: header.kernelOffset, count: header.kernelSize, into: memory, address: loadAddress,
                        what: "protected-mode kernel")

        var params = [UInt8](repeating: 0, count: 4096)
        let setupHeader = try kernel.bytes(at: Field.setupSectors, count: header.setupHeaderEnd - Field.setupSectors,
                                           what: "setup header")
        params.replaceSubrange(Field.setupSectors..<header.setupHeaderEnd, with: setupHeader)
        params[Field.typeOfLoader] = 0xFF
        put(UInt32(commandLineAddress), at: Field.commandLinePointer, in: &params)
        let tables = ACPITables(platform, at: biosTablesAddress)
        let mpTable = MPTable(platform, at: biosTablesAddress + UInt64((tables.bytes.count + 15) / 16 * 16))
        let biosTablesEnd = mpTable.base + UInt64(mpTable.bytes.count)
        guard biosTablesEnd <= biosTablesAddress + UInt64(biosTablesArea) else {
            throw .doesNotFit("firmware tables for \(platform.vcpuCount) vCPUs exceed the \(biosTablesArea)-byte BIOS area")
        }
        // Read by kernels from boot protocol 2.14 on; older ones scan 0xE0000-0xFFFFF.
        put(tables.rsdpAddress, at: Field.acpiRSDPAddress, in: &params)

        let kernelEnd = loadAddress + UInt64(header.initSize)
        if let initrd {
            let address = try placeInitrd(size: UInt64(initrd.size), above: kernelEnd,
                                          limit: UInt64(header.initrdAddressMax), map: map)
            try initrd.load(at: 0, count: initrd.size, into: memory, address: address, what: "initrd")
            put(UInt32(address), at: Field.ramdiskImage, in: &params)
            put(UInt32(initrd.size), at: Field.ramdiskSize, in: &params)
        }
        let e820 = map.entries.prefix(e820MaxEntries)
        params[Field.e820Count] = UInt8(e820.count)
        for (index, entry) in e820.enumerated() {
            let offset = Field.e820Table + index * 20
            put(entry.start, at: offset, in: &params)
            put(entry.size, at: offset + 8, in: &params)
            put(entry.kind.rawValue, at: offset + 16, in: &params)
        }
        do {
            try memory.write(params, at: bootParamsAddress)
            try memory.zero(at: commandLineAddress, count: commandLineArea)
            try memory.write(commandLineBytes, at: commandLineAddress)
            try memory.write(tables.bytes, at: tables.base)
            try memory.write(mpTable.bytes, at: mpTable.base)
            try writeGDT(memory)
            try writeIdentityMap(memory)
        } catch {
            throw .doesNotFit("boot structures below 1 MiB: \(error)")
        }
        return BootEntry(mode: .long64(pageTableRoot: pageTableRoot, gdtBase: gdtAddress, gdtLimit: 4 * 8 - 1,
                                       codeSelector: codeSelector, dataSelector: dataSelector),
                         instructionPointer: loadAddress + 0x200, rsi: bootParamsAddress)
    }

    /// The kernel's preferred address when it fits; a relocatable kernel
    /// that does not fit there goes to the lowest aligned address from 1 MiB.
    static func placeKernel(_ header: SetupHeader, map: MemoryMap) throws(LoaderError) -> UInt64 {
        let needed = UInt64(max(header.initSize, UInt32(header.kernelSize)))
        if map.isUsable(header.preferredAddress, size: needed) { return header.preferredAddress }
        if header.relocatable {
            let alignment = UInt64(max(header.kernelAlignment, 0x1000))
            let low = (MemoryMap.highRAMStart + alignment - 1) / alignment * alignment
            if map.isUsable(low, size: needed) { return low }
        }
        throw .doesNotFit("the kernel needs \(needed) bytes (init_size) at 0x\(hex(header.preferredAddress)); guest RAM ends at 0x\(hex(map.endOfRAMBelow4G))")
    }

    /// The highest page-aligned address below `limit` (initrd_addr_max) and
    /// below 4 GiB where the initrd fits above the kernel.
    static func placeInitrd(size: UInt64, above kernelEnd: UInt64, limit: UInt64,
                            map: MemoryMap) throws(LoaderError) -> UInt64 {
        let top = min(map.endOfRAMBelow4G, limit == 0 ? 0x37FF_FFFF : limit + 1)
        guard size <= top, (top - size) & ~0xFFF >= kernelEnd else {
            throw .doesNotFit("the initrd of \(size) bytes does not fit between the kernel's end 0x\(hex(kernelEnd)) and 0x\(hex(top))")
        }
        return (top - size) & ~0xFFF
    }

    static func writeGDT(_ memory: GuestMemory) throws(GuestMemoryError) {
        let entries: [UInt64] = [0, 0, 0x00AF_9B00_0000_FFFF /* 64-bit code */, 0x00CF_9300_0000_FFFF /* data */]
        try memory.write(entries.flatMap { littleEndian($0) }, at: gdtAddress)
    }

    /// PML4 -> one PDPT -> four page directories of 2 MiB pages: 0-4 GiB.
    static func writeIdentityMap(_ memory: GuestMemory) throws(GuestMemoryError) {
        let present: UInt64 = 0x3, large: UInt64 = 0x80
        let pdpt = pageTableRoot + 0x1000, directories = pageTableRoot + 0x2000
        try memory.zero(at: pageTableRoot, count: 0x6000)
        try memory.store(pdpt | present, at: pageTableRoot)
        for directory in 0..<UInt64(4) {
            try memory.store((directories + directory * 0x1000) | present, at: pdpt + directory * 8)
            for entry in 0..<UInt64(512) {
                let physical = (directory * 512 + entry) << 21
                try memory.store(physical | present | large, at: directories + directory * 0x1000 + entry * 8)
            }
        }
    }

    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        bytes.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: littleEndian(value))
    }
}

/// The fields of a bzImage's setup header the loader relies on, checked.
struct SetupHeader {
    var protocolVersion: UInt16
    var kernelOffset: Int
    var kernelSize: Int
    var setupHeaderEnd: Int
    var relocatable: Bool
    var kernelAlignment: UInt32
    var preferredAddress: UInt64
    var initSize: UInt32
    var commandLineSize: UInt32
    var initrdAddressMax: UInt32

    typealias Field = LinuxLoader.Field

    init(_ image: some ImageSource) throws(LoaderError) {
        guard image.size >= 0x270 else {
            throw .truncated("a bzImage has a setup header up to 0x270; this file has \(image.size) bytes")
        }
        guard try image.integer(UInt16.self, at: Field.bootFlag, what: "boot_flag") == 0xAA55 else {
            throw .badFormat("no boot sector signature 0xAA55 at 0x1FE: not a bzImage")
        }
        guard try image.integer(UInt32.self, at: Field.headerMagic, what: "header") == 0x5372_6448 else {
            throw .badFormat("no \"HdrS\" at 0x202: not a Linux boot protocol 2.x image")
        }
        protocolVersion = try image.integer(UInt16.self, at: Field.version, what: "version")
        guard protocolVersion >= LinuxLoader.minimumProtocol else {
            throw .unsupported("boot protocol \(protocolVersion >> 8).\(protocolVersion & 0xFF); 2.12 or later is needed for the 64-bit entry")
        }
        let loadFlags = try image.integer(UInt8.self, at: Field.loadFlags, what: "loadflags")
        guard loadFlags & 0x01 != 0 else { throw .unsupported("a zImage (not loaded high); only bzImage is supported") }
        let xloadflags = try image.integer(UInt16.self, at: Field.xloadflags, what: "xloadflags")
        guard xloadflags & 0x01 != 0 else { throw .unsupported("the kernel has no 64-bit entry point (XLF_KERNEL_64)") }
        var setupSectors = Int(try image.integer(UInt8.self, at: Field.setupSectors, what: "setup_sects"))
        if setupSectors == 0 { setupSectors = 4 }
        kernelOffset = (setupSectors + 1) * 512
        guard kernelOffset < image.size else {
            throw .truncated("setup_sects says the kernel starts at \(kernelOffset); the file has \(image.size) bytes")
        }
        kernelSize = image.size - kernelOffset
        let paragraphs = try image.integer(UInt32.self, at: Field.sysSize, what: "syssize")
        guard UInt64(paragraphs) * 16 <= UInt64(kernelSize) else {
            throw .truncated("syssize says \(UInt64(paragraphs) * 16) bytes of kernel; the file holds \(kernelSize)")
        }
        let jump = Int(try image.integer(UInt8.self, at: Field.jump + 1, what: "jump"))
        setupHeaderEnd = min(Field.jump + 2 + jump, 0x280)
        guard setupHeaderEnd >= Field.initSize + 4 else {
            throw .badFormat("the setup header ends at 0x\(String(setupHeaderEnd, radix: 16)), before init_size")
        }
        relocatable = try image.integer(UInt8.self, at: Field.relocatable, what: "relocatable_kernel") != 0
        kernelAlignment = try image.integer(UInt32.self, at: Field.kernelAlignment, what: "kernel_alignment")
        guard kernelAlignment == 0 || kernelAlignment.nonzeroBitCount == 1 else {
            throw .badFormat("kernel_alignment 0x\(String(kernelAlignment, radix: 16)) is not a power of two")
        }
        preferredAddress = try image.integer(UInt64.self, at: Field.preferredAddress, what: "pref_address")
        initSize = try image.integer(UInt32.self, at: Field.initSize, what: "init_size")
        guard UInt64(initSize) >= UInt64(kernelSize) else {
            throw .badFormat("init_size \(initSize) is smaller than the \(kernelSize)-byte kernel it must hold")
        }
        commandLineSize = try image.integer(UInt32.self, at: Field.commandLineSize, what: "cmdline_size")
        initrdAddressMax = try image.integer(UInt32.self, at: Field.initrdAddressMax, what: "initrd_addr_max")
    }
}
