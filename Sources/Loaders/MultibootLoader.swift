import GuestMemory

/// Loads a Multiboot (version 1) kernel: the project's test guest, and
/// anything `qemu-system-x86_64 -kernel` boots the same way.
///
/// The image is placed from its multiboot header's address fields when
/// flag 16 says they are valid, else from its ELF program headers. The
/// multiboot information structure (memory map, command line, loader name)
/// follows the image on the next page, as QEMU places it.
public enum MultibootLoader {
    static let headerMagic: UInt32 = 0x1BAD_B002
    /// What EAX holds on entry, telling the kernel a multiboot loader ran.
    public static let loaderMagic: UInt32 = 0x2BAD_B002
    /// The header must lie within the image's first 8 KiB, 4-aligned.
    static let searchLimit = 8192
    /// Flags 0-15 are requirements: 0 (page-aligned modules: we load none)
    /// and 1 (memory information) are met; 2 (video mode) is not.
    static let satisfiableRequirements: UInt32 = 0b11
    static let addressFieldsValid: UInt32 = 1 << 16
    static let loaderName = "colo vmmd"

    /// Loads `image` into `memory` and prepares its boot information.
    public static func load(_ image: some ImageSource, commandLine: String,
                            into memory: GuestMemory) throws(LoaderError) -> BootEntry {
        let map = try MemoryMap(memory)
        let header = try findHeader(image)
        let unmet = header.flags & 0xFFFF & ~satisfiableRequirements
        guard unmet == 0 else {
            throw .unsupported("multiboot header requires flags 0x\(String(unmet, radix: 16)) (video mode) this loader does not provide")
        }
        let loaded: (end: UInt64, entry: UInt64)
        if header.flags & addressFieldsValid != 0 {
            loaded = try loadByAddressFields(image, header: header, map: map, memory: memory)
        } else {
            loaded = try ELFImage.load(image, map: map, memory: memory)
        }
        let info = try writeInformation(after: loaded.end, commandLine: commandLine, map: map, memory: memory)
        return BootEntry(mode: .flatProtected32, instructionPointer: loaded.entry,
                         rax: UInt64(loaderMagic), rbx: info)
    }

    struct Header {
        var offset: Int
        var flags: UInt32
    }

    static func findHeader(_ image: some ImageSource) throws(LoaderError) -> Header {
        let window = try image.bytes(at: 0, count: min(image.size, searchLimit), what: "multiboot search window")
        var offset = 0
        while offset + 12 <= window.count {
            let magic = word(window, offset)
            if magic == headerMagic {
                let flags = word(window, offset + 4)
                let checksum = word(window, offset + 8)
                guard magic &+ flags &+ checksum == 0 else {
                    throw .badFormat("multiboot header at offset \(offset) has a bad checksum")
                }
                return Header(offset: offset, flags: flags)
            }
            offset += 4
        }
        throw .badFormat("no multiboot header in the first \(searchLimit) bytes")
    }

    private static func word(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
            | UInt32(bytes[offset + 3]) << 24
    }

    /// Flag 16: header_addr, load_addr, load_end_addr, bss_end_addr and
    /// entry_addr follow the checksum and say where the file goes.
    private static func loadByAddressFields(_ image: some ImageSource, header: Header, map: MemoryMap,
                                            memory: GuestMemory) throws(LoaderError) -> (end: UInt64, entry: UInt64) {
        let fields = try image.bytes(at: header.offset + 12, count: 20, what: "multiboot address fields")
        let headerAddress = UInt64(word(fields, 0)), loadAddress = UInt64(word(fields, 4))
        let loadEnd = UInt64(word(fields, 8)), bssEnd = UInt64(word(fields, 12))
        let entry = UInt64(word(fields, 16))
        guard loadAddress <= headerAddress, headerAddress - loadAddress <= UInt64(header.offset) else {
            throw .badFormat("multiboot header_addr 0x\(hex(headerAddress)) and load_addr 0x\(hex(loadAddress)) put the load before the file's start")
        }
        let fileOffset = header.offset - Int(headerAddress - loadAddress)
        let loadSize: UInt64
        if loadEnd == 0 {
            loadSize = UInt64(image.size - fileOffset)
        } else {
            guard loadEnd > loadAddress else {
                throw .badFormat("multiboot load_end_addr 0x\(hex(loadEnd)) is not above load_addr 0x\(hex(loadAddress))")
            }
            loadSize = loadEnd - loadAddress
        }
        guard loadSize <= UInt64(image.size - fileOffset) else {
            throw .truncated("multiboot header says \(loadSize) bytes from file offset \(fileOffset), the file has \(image.size - fileOffset)")
        }
        let end = bssEnd == 0 ? loadAddress + loadSize : bssEnd
        guard end >= loadAddress + loadSize else {
            throw .badFormat("multiboot bss_end_addr 0x\(hex(bssEnd)) lies below load_end_addr")
        }
        guard map.isUsable(loadAddress, size: end - loadAddress) else {
            throw .doesNotFit("image at 0x\(hex(loadAddress))-0x\(hex(end)) is outside usable guest RAM")
        }
        guard entry >= loadAddress, entry < end else {
            throw .badFormat("multiboot entry_addr 0x\(hex(entry)) is outside the image 0x\(hex(loadAddress))-0x\(hex(end))")
        }
        try image.load(at: fileOffset, count: Int(loadSize), into: memory, address: loadAddress, what: "kernel image")
        try zero(memory, from: loadAddress + loadSize, to: end)
        return (end, entry)
    }

    /// Writes the multiboot information (with command line, loader name and
    /// memory map) on the page after `imageEnd`; returns its address.
    private static func writeInformation(after imageEnd: UInt64, commandLine: String, map: MemoryMap,
                                         memory: GuestMemory) throws(LoaderError) -> UInt64 {
        let base = (imageEnd + 0xFFF) & ~0xFFF
        let infoSize: UInt64 = 0x80
        let commandLineBytes = Array(commandLine.utf8) + [0]
        let nameBytes = Array(loaderName.utf8) + [0]
        let commandLineAddress = base + infoSize
        let nameAddress = commandLineAddress + UInt64(commandLineBytes.count)
        let mapAddress = (nameAddress + UInt64(nameBytes.count) + 7) & ~7
        let mapLength = UInt64(map.entries.count * 24)
        let total = mapAddress + mapLength - base
        guard mapAddress + mapLength <= 1 << 32, map.isUsable(base, size: total) else {
            throw .doesNotFit("multiboot information (\(total) bytes at 0x\(hex(base))) does not fit after the image")
        }
        var info = [UInt8](repeating: 0, count: Int(infoSize))
        func put(_ value: UInt32, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { info.replaceSubrange(offset..<offset + 4, with: $0) }
        }
        let flags: UInt32 = 1 << 0 /* mem_lower/upper */ | 1 << 2 /* cmdline */ | 1 << 6 /* mmap */ | 1 << 9 /* name */
        put(flags, 0)
        put(UInt32(MemoryMap.lowRAMEnd / 1024), 4)
        put(UInt32((map.endOfRAMBelow4G - MemoryMap.highRAMStart) / 1024), 8)
        put(UInt32(commandLineAddress), 16)
        put(UInt32(mapLength), 44)
        put(UInt32(mapAddress), 48)
        put(UInt32(nameAddress), 64)
        var mapBytes: [UInt8] = []
        for entry in map.entries {
            mapBytes += littleEndian(UInt32(20)) + littleEndian(entry.start) + littleEndian(entry.size)
                + littleEndian(entry.kind.rawValue)
        }
        do {
            try memory.zero(at: base, count: Int(total))
            try memory.write(info, at: base)
            try memory.write(commandLineBytes, at: commandLineAddress)
            try memory.write(nameBytes, at: nameAddress)
            try memory.write(mapBytes, at: mapAddress)
        } catch {
            throw .doesNotFit("multiboot information: \(error)")
        }
        return base
    }
}

func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

func hex(_ value: UInt64) -> String {
    String(value, radix: 16)
}

func zero(_ memory: GuestMemory, from start: UInt64, to end: UInt64) throws(LoaderError) {
    guard end > start else { return }
    do {
        try memory.zero(at: start, count: Int(end - start))
    } catch {
        throw .doesNotFit("\(error)")
    }
}
