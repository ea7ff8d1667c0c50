import GuestMemory

/// The ELF path of the multiboot loader: an ELF32 or ELF64 x86 executable
/// whose PT_LOAD segments go to their physical addresses.
enum ELFImage {
    static let loadSegment: UInt32 = 1

    struct Segment {
        var fileOffset: UInt64
        var fileSize: UInt64
        var physicalAddress: UInt64
        var virtualAddress: UInt64
        var memorySize: UInt64
    }

    /// Loads every PT_LOAD segment; returns the end of the highest one and
    /// the physical entry point.
    static func load(_ image: some ImageSource, map: MemoryMap,
                     memory: GuestMemory) throws(LoaderError) -> (end: UInt64, entry: UInt64) {
        let identity = try image.bytes(at: 0, count: 16, what: "ELF identification")
        guard identity[0..<4] == [0x7F, 0x45, 0x4C, 0x46] else {
            throw .badFormat("neither a multiboot address header (flag 16) nor an ELF file")
        }
        guard identity[5] == 1 else { throw .unsupported("big-endian ELF") }
        let is64: Bool
        switch identity[4] {
        case 1: is64 = false
        case 2: is64 = true
        default: throw .badFormat("ELF class \(identity[4])")
        }
        let machine = try image.integer(UInt16.self, at: 18, what: "ELF header")
        guard machine == (is64 ? 62 : 3) else { throw .unsupported("ELF machine \(machine) is not x86") }
        let entry: UInt64, programHeaders: UInt64, entrySize: Int, count: Int
        if is64 {
            entry = try image.integer(UInt64.self, at: 24, what: "ELF header")
            programHeaders = try image.integer(UInt64.self, at: 32, what: "ELF header")
            entrySize = Int(try image.integer(UInt16.self, at: 54, what: "ELF header"))
            count = Int(try image.integer(UInt16.self, at: 56, what: "ELF header"))
        } else {
            entry = UInt64(try image.integer(UInt32.self, at: 24, what: "ELF header"))
            programHeaders = UInt64(try image.integer(UInt32.self, at: 28, what: "ELF header"))
            entrySize = Int(try image.integer(UInt16.self, at: 42, what: "ELF header"))
            count = Int(try image.integer(UInt16.self, at: 44, what: "ELF header"))
        }
        guard entrySize >= (is64 ? 56 : 32) else { throw .badFormat("ELF program header size \(entrySize)") }
        guard programHeaders <= UInt64(image.size) else { throw .truncated("ELF program headers lie past the end") }
        var segments: [Segment] = []
        for index in 0..<count {
            let offset = Int(programHeaders) + index * entrySize
            let raw = try image.bytes(at: offset, count: entrySize, what: "ELF program header \(index)")
            let source = ByteImage(raw)
            guard try source.integer(UInt32.self, at: 0, what: "p_type") == loadSegment else { continue }
            if is64 {
                segments.append(Segment(fileOffset: try source.integer(UInt64.self, at: 8, what: "p_offset"),
                                        fileSize: try source.integer(UInt64.self, at: 32, what: "p_filesz"),
                                        physicalAddress: try source.integer(UInt64.self, at: 24, what: "p_paddr"),
                                        virtualAddress: try source.integer(UInt64.self, at: 16, what: "p_vaddr"),
                                        memorySize: try source.integer(UInt64.self, at: 40, what: "p_memsz")))
            } else {
                segments.append(Segment(fileOffset: UInt64(try source.integer(UInt32.self, at: 4, what: "p_offset")),
                                        fileSize: UInt64(try source.integer(UInt32.self, at: 16, what: "p_filesz")),
                                        physicalAddress: UInt64(try source.integer(UInt32.self, at: 12, what: "p_paddr")),
                                        virtualAddress: UInt64(try source.integer(UInt32.self, at: 8, what: "p_vaddr")),
                                        memorySize: UInt64(try source.integer(UInt32.self, at: 20, what: "p_memsz"))))
            }
        }
        guard !segments.isEmpty else { throw .badFormat("ELF file has no PT_LOAD segment") }
        var end: UInt64 = 0
        for segment in segments {
            guard segment.fileSize <= segment.memorySize else {
                throw .badFormat("ELF segment at 0x\(hex(segment.physicalAddress)) has p_filesz > p_memsz")
            }
            guard segment.fileOffset <= UInt64(image.size), segment.fileSize <= UInt64(image.size) - segment.fileOffset else {
                throw .truncated("ELF segment at 0x\(hex(segment.physicalAddress)) needs file bytes up to \(segment.fileOffset &+ segment.fileSize), the file has \(image.size)")
            }
            guard map.isUsable(segment.physicalAddress, size: segment.memorySize) else {
                throw .doesNotFit("ELF segment at 0x\(hex(segment.physicalAddress)) (\(segment.memorySize) bytes) is outside usable guest RAM")
            }
            try image.load(at: Int(segment.fileOffset), count: Int(segment.fileSize), into: memory,
                           address: segment.physicalAddress, what: "ELF segment")
            try zero(memory, from: segment.physicalAddress + segment.fileSize,
                     to: segment.physicalAddress + segment.memorySize)
            end = max(end, segment.physicalAddress + segment.memorySize)
        }
        // The entry is physical if it lies in a segment's physical range,
        // else translated through the segment whose virtual range holds it.
        let physicalEntry: UInt64
        if segments.contains(where: { entry >= $0.physicalAddress && entry < $0.physicalAddress + $0.memorySize }) {
            physicalEntry = entry
        } else if let holder = segments.first(where: { entry >= $0.virtualAddress && entry < $0.virtualAddress + $0.memorySize }) {
            physicalEntry = holder.physicalAddress + (entry - holder.virtualAddress)
        } else {
            throw .badFormat("ELF entry 0x\(hex(entry)) lies in no loaded segment")
        }
        guard physicalEntry < 1 << 32 else { throw .unsupported("ELF entry 0x\(hex(physicalEntry)) is above 4 GiB") }
        return (end, physicalEntry)
    }
}
