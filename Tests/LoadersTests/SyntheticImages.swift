import Loaders

/// Little-endian stores into a byte array, for building test images.
extension Array where Element == UInt8 {
    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let bytes = Swift.withUnsafeBytes(of: value.littleEndian) { Array($0) }
        if offset + bytes.count > count { append(contentsOf: repeatElement(0, count: offset + bytes.count - count)) }
        replaceSubrange(offset..<offset + bytes.count, with: bytes)
    }

    func get<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        self[offset..<offset + MemoryLayout<T>.size].withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }
}

/// A synthetic bzImage: a setup header (protocol 2.15) in front of a
/// protected-mode "kernel" of recognisable bytes.
struct SyntheticBzImage {
    var setupSectors: UInt8 = 4
    var version: UInt16 = 0x020F
    var loadFlags: UInt8 = 0x01
    var xloadflags: UInt16 = 0x01 | 0x02
    var preferredAddress: UInt64 = 0x100_0000
    var kernelAlignment: UInt32 = 0x20_0000
    var relocatable: UInt8 = 1
    var initSize: UInt32 = 0x40_0000
    var commandLineSize: UInt32 = 2047
    var initrdAddressMax: UInt32 = 0x7FFF_FFFF
    var kernelBytes = 64 * 1024
    var sysSizeOverride: UInt32?

    var kernel: [UInt8] { (0..<kernelBytes).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) } }

    var bytes: [UInt8] {
        var image = [UInt8](repeating: 0, count: (Int(setupSectors) + 1) * 512)
        image[0x1F1] = setupSectors
        image.put(sysSizeOverride ?? UInt32(kernelBytes / 16), at: 0x1F4)
        image.put(UInt16(0xAA55), at: 0x1FE)
        image[0x200] = 0xEB              // jmp short
        image[0x201] = 0x6A              // header ends at 0x202 + 0x6A = 0x26C
        image.put(UInt32(0x5372_6448), at: 0x202)
        image.put(version, at: 0x206)
        image[0x211] = loadFlags
        image.put(initrdAddressMax, at: 0x22C)
        image.put(kernelAlignment, at: 0x230)
        image[0x234] = relocatable
        image.put(xloadflags, at: 0x236)
        image.put(commandLineSize, at: 0x238)
        image.put(preferredAddress, at: 0x258)
        image.put(initSize, at: 0x260)
        return image + kernel
    }
}

/// A minimal ELF32 executable with one PT_LOAD segment (multiboot without
/// address fields: loaded by program headers).
func syntheticELF32(loadAddress: UInt32, code: [UInt8], bss: Int, entry: UInt32, flags: UInt32 = 0x3) -> [UInt8] {
    var image = [UInt8](repeating: 0, count: 0x1000)
    image.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
    image[4] = 1                                  // ELFCLASS32
    image[5] = 1                                  // little-endian
    image[6] = 1
    image.put(UInt16(2), at: 16)                  // ET_EXEC
    image.put(UInt16(3), at: 18)                  // EM_386
    image.put(UInt32(1), at: 20)
    image.put(entry, at: 24)
    image.put(UInt32(52), at: 28)                 // e_phoff
    image.put(UInt16(52), at: 40)                 // e_ehsize
    image.put(UInt16(32), at: 42)                 // e_phentsize
    image.put(UInt16(1), at: 44)                  // e_phnum
    let ph = 52
    image.put(UInt32(1), at: ph)                  // PT_LOAD
    image.put(UInt32(0x1000), at: ph + 4)         // p_offset
    image.put(loadAddress, at: ph + 8)            // p_vaddr
    image.put(loadAddress, at: ph + 12)           // p_paddr
    image.put(UInt32(code.count), at: ph + 16)    // p_filesz
    image.put(UInt32(code.count + bss), at: ph + 20)
    // Multiboot header (no address fields) at the start of the segment.
    var segment = code
    segment.put(UInt32(0x1BAD_B002), at: 0)
    segment.put(flags, at: 4)
    segment.put(UInt32(0) &- 0x1BAD_B002 &- flags, at: 8)
    return image + segment
}
