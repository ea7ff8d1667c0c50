import GuestMemory
@testable import Loaders
import XCTest

final class MultibootLoaderTests: XCTestCase {
    func testELFLoadsSegmentsZeroesBssAndDescribesMemory() throws {
        let memory = try GuestMemory(size: 32 << 20)
        // Dirty the bss area first: the loader must zero it.
        try memory.write([UInt8](repeating: 0xAA, count: 0x2000), at: 0x20_1000)
        let code = (0..<0x1000).map { UInt8(truncatingIfNeeded: $0) }
        let image = syntheticELF32(loadAddress: 0x20_0000, code: code, bss: 0x2000, entry: 0x20_0010)
        let entry = try MultibootLoader.load(ByteImage(image), commandLine: "ip=10.0.0.2/24 dirty=1", into: memory)

        XCTAssertEqual(entry.mode, .flatProtected32)
        XCTAssertEqual(entry.instructionPointer, 0x20_0010)
        XCTAssertEqual(entry.rax, 0x2BAD_B002)
        XCTAssertEqual(try memory.read(at: 0x20_0010, count: 16), Array(image[0x1010..<0x1020]))
        XCTAssertEqual(try memory.read(at: 0x20_1000, count: 0x2000), [UInt8](repeating: 0, count: 0x2000))

        // The information structure sits on the page after the image.
        let info = entry.rbx
        XCTAssertEqual(info, 0x20_3000)
        let flags = try memory.load(UInt32.self, at: info)
        XCTAssertEqual(flags & 0x245, 0x245)          // mem, cmdline, mmap, loader name
        XCTAssertEqual(try memory.load(UInt32.self, at: info + 4), 639)
        XCTAssertEqual(try memory.load(UInt32.self, at: info + 8), (32 << 10) - 1024)
        let commandLine = UInt64(try memory.load(UInt32.self, at: info + 16))
        XCTAssertEqual(try memory.read(at: commandLine, count: 23), Array("ip=10.0.0.2/24 dirty=1\0".utf8))
        let mapLength = try memory.load(UInt32.self, at: info + 44)
        let mapAddress = UInt64(try memory.load(UInt32.self, at: info + 48))
        XCTAssertEqual(mapLength, 4 * 24)
        var entries: [(UInt64, UInt64, UInt32)] = []
        for index in 0..<4 {
            let base = mapAddress + UInt64(index * 24)
            XCTAssertEqual(try memory.load(UInt32.self, at: base), 20)
            entries.append((try memory.load(UInt64.self, at: base + 4), try memory.load(UInt64.self, at: base + 12),
                            try memory.load(UInt32.self, at: base + 20)))
        }
        XCTAssertEqual(entries.map { $0.0 }, [0, 0x9FC00, 0xF0000, 0x100000])
        XCTAssertEqual(entries.map { $0.2 }, [1, 2, 2, 1])
        XCTAssertEqual(entries[3].1, (32 << 20) - 0x100000)
    }

    func testAddressFieldsWinOverELF() throws {
        var image = syntheticELF32(loadAddress: 0x20_0000, code: [UInt8](repeating: 0x90, count: 0x800),
                                   bss: 0, entry: 0x20_0000, flags: 0x1_0003)
        // header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
        image.put(UInt32(0x30_0000), at: 0x100C)
        image.put(UInt32(0x30_0000), at: 0x1010)
        image.put(UInt32(0x30_0800), at: 0x1014)
        image.put(UInt32(0x30_4000), at: 0x1018)
        image.put(UInt32(0x30_0040), at: 0x101C)
        let memory = try GuestMemory(size: 8 << 20)
        let entry = try MultibootLoader.load(ByteImage(image), commandLine: "", into: memory)
        XCTAssertEqual(entry.instructionPointer, 0x30_0040)
        XCTAssertEqual(entry.rbx, 0x30_4000)
        XCTAssertEqual(try memory.load(UInt32.self, at: 0x30_0000), 0x1BAD_B002)
    }

    func testBadImagesAreClearErrors() throws {
        let memory = try GuestMemory(size: 8 << 20)
        let good = syntheticELF32(loadAddress: 0x20_0000, code: [UInt8](repeating: 0, count: 64), bss: 0,
                                  entry: 0x20_0000)
        func error(_ bytes: [UInt8], ram: GuestMemory? = nil) -> LoaderError? {
            do {
                _ = try MultibootLoader.load(ByteImage(bytes), commandLine: "", into: ram ?? memory)
                return nil
            } catch {
                return error
            }
        }
        XCTAssertEqual(error([]), .badFormat("no multiboot header in the first 8192 bytes"))
        var checksum = good
        checksum[0x1008] ^= 1
        XCTAssertEqual(error(checksum), .badFormat("multiboot header at offset 4096 has a bad checksum"))
        var noELF = good
        noELF[0] = 0
        XCTAssertEqual(error(noELF), .badFormat("neither a multiboot address header (flag 16) nor an ELF file"))
        var lyingSize = good
        lyingSize.put(UInt32(1 << 20), at: 52 + 16)        // p_filesz far past the file
        lyingSize.put(UInt32(1 << 20), at: 52 + 20)
        guard case .truncated = error(lyingSize) else { return XCTFail("\(String(describing: error(lyingSize)))") }
        var outside = good
        outside.put(UInt32(0x7F0_0000), at: 52 + 12)       // p_paddr beyond 8 MiB
        guard case .doesNotFit = error(outside) else { return XCTFail() }
        var entry = good
        entry.put(UInt32(0x50_0000), at: 24)
        XCTAssertEqual(error(entry), .badFormat("ELF entry 0x500000 lies in no loaded segment"))
        var fileSizeOverMemory = good
        fileSizeOverMemory.put(UInt32(8), at: 52 + 20)
        guard case .badFormat = error(fileSizeOverMemory) else { return XCTFail() }
        let tiny = try GuestMemory(size: 1 << 20)
        guard case .doesNotFit = error(good, ram: tiny) else { return XCTFail() }
    }
}

final class LinuxLoaderTests: XCTestCase {
    func testBootParametersCommandLineInitrdAndE820() throws {
        let memory = try GuestMemory(size: 64 << 20)
        let image = SyntheticBzImage()
        let initrd = ByteImage((0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 3) })
        let entry = try LinuxLoader.load(ByteImage(image.bytes), initrd: initrd,
                                         commandLine: "console=ttyS0 root=/dev/vda", platform: .twoVcpus,
                                         into: memory)

        XCTAssertEqual(entry.instructionPointer, 0x100_0000 + 0x200)
        XCTAssertEqual(entry.rsi, 0x7000)
        XCTAssertEqual(entry.mode, .long64(pageTableRoot: 0x9000, gdtBase: 0x500, gdtLimit: 31,
                                           codeSelector: 0x10, dataSelector: 0x18))
        // The protected-mode kernel at its preferred address.
        XCTAssertEqual(try memory.read(at: 0x100_0000, count: 256), Array(image.kernel.prefix(256)))

        let params = try memory.read(at: 0x7000, count: 4096)
        XCTAssertEqual(params.get(UInt16.self, at: 0x1FE), 0xAA55)
        XCTAssertEqual(params.get(UInt32.self, at: 0x202), 0x5372_6448)
        XCTAssertEqual(params[0x210], 0xFF)                        // type_of_loader
        XCTAssertEqual(params.get(UInt32.self, at: 0x228), 0x2_0000) // cmd_line_ptr
        XCTAssertEqual(try memory.read(at: 0x2_0000, count: 28), Array("console=ttyS0 root=/dev/vda\0".utf8))

        let initrdAddress = UInt64(params.get(UInt32.self, at: 0x218))
        XCTAssertEqual(params.get(UInt32.self, at: 0x21C), 10_000)
        XCTAssertEqual(initrdAddress % 4096, 0)
        XCTAssertEqual(initrdAddress, ((64 << 20) - 10_000) & ~0xFFF, "highest page-aligned fit")
        XCTAssertGreaterThanOrEqual(initrdAddress, 0x100_0000 + UInt64(image.initSize))
        XCTAssertEqual(try memory.read(at: initrdAddress, count: 10_000), initrd.contents)

        XCTAssertEqual(params[0x1E8], 4)
        var e820: [(UInt64, UInt64, UInt32)] = []
        for index in 0..<4 {
            let offset = 0x2D0 + index * 20
            e820.append((params.get(UInt64.self, at: offset), params.get(UInt64.self, at: offset + 8),
                         params.get(UInt32.self, at: offset + 16)))
        }
        XCTAssertEqual(e820.map { $0.0 }, [0, 0x9FC00, 0xF0000, 0x100000])
        XCTAssertEqual(e820.map { $0.2 }, [1, 2, 2, 1])
        XCTAssertEqual(e820[3].1, (64 << 20) - 0x100000)

        // Identity map: PML4[0] -> PDPT, PDPT[i] -> PD i, 2 MiB pages.
        XCTAssertEqual(try memory.load(UInt64.self, at: 0x9000), 0xA000 | 3)
        XCTAssertEqual(try memory.load(UInt64.self, at: 0xA000 + 8), 0xC000 | 3)
        XCTAssertEqual(try memory.load(UInt64.self, at: 0xB000 + 8 * 5), (5 << 21) | 0x83)
        XCTAssertEqual(try memory.load(UInt64.self, at: 0xE000 + 8 * 511), (UInt64(2047) << 21) | 0x83)
        XCTAssertEqual(try memory.load(UInt64.self, at: 0x500 + 16), 0x00AF_9B00_0000_FFFF)
    }

    func testRelocatableKernelGoesLowWhenItsPreferredAddressDoesNotFit() throws {
        var image = SyntheticBzImage()
        image.preferredAddress = 0x4000_0000
        let memory = try GuestMemory(size: 16 << 20)
        let entry = try LinuxLoader.load(ByteImage(image.bytes), initrd: Optional<ByteImage>.none,
                                         commandLine: "", platform: .twoVcpus, into: memory)
        XCTAssertEqual(entry.instructionPointer, 0x20_0000 + 0x200, "1 MiB rounded up to kernel_alignment")
        image.relocatable = 0
        XCTAssertThrowsError(try LinuxLoader.load(ByteImage(image.bytes), initrd: Optional<ByteImage>.none,
                                                  commandLine: "", platform: .twoVcpus, into: memory)) { error in
            guard case LoaderError.doesNotFit = error else { return XCTFail("\(error)") }
        }
    }

    func testBadImagesAreClearErrors() throws {
        let memory = try GuestMemory(size: 32 << 20)
        func error(_ image: [UInt8], commandLine: String = "", initrd: ByteImage? = nil,
                   ram: GuestMemory? = nil) -> LoaderError? {
            do {
                _ = try LinuxLoader.load(ByteImage(image), initrd: initrd, commandLine: commandLine,
                                         platform: .twoVcpus, into: ram ?? memory)
                return nil
            } catch {
                return error
            }
        }
        XCTAssertNil(error(SyntheticBzImage().bytes))
        guard case .truncated = error(Array(SyntheticBzImage().bytes.prefix(0x200))) else { return XCTFail() }
        var noSignature = SyntheticBzImage().bytes
        noSignature[0x1FE] = 0
        XCTAssertEqual(error(noSignature), .badFormat("no boot sector signature 0xAA55 at 0x1FE: not a bzImage"))
        var noMagic = SyntheticBzImage().bytes
        noMagic[0x202] = 0
        guard case .badFormat = error(noMagic) else { return XCTFail() }
        var old = SyntheticBzImage()
        old.version = 0x0206
        XCTAssertEqual(error(old.bytes), .unsupported("boot protocol 2.6; 2.12 or later is needed for the 64-bit entry"))
        var zImage = SyntheticBzImage()
        zImage.loadFlags = 0
        guard case .unsupported = error(zImage.bytes) else { return XCTFail() }
        var no64 = SyntheticBzImage()
        no64.xloadflags = 0
        XCTAssertEqual(error(no64.bytes), .unsupported("the kernel has no 64-bit entry point (XLF_KERNEL_64)"))
        var lyingSysSize = SyntheticBzImage()
        lyingSysSize.sysSizeOverride = 1 << 20
        guard case .truncated = error(lyingSysSize.bytes) else { return XCTFail() }
        var lyingSetup = SyntheticBzImage()
        lyingSetup.setupSectors = 200
        guard case .truncated = error(Array(lyingSetup.bytes.prefix(0x1000))) else { return XCTFail() }
        var lyingInit = SyntheticBzImage()
        lyingInit.initSize = 16
        guard case .badFormat = error(lyingInit.bytes) else { return XCTFail() }
        var badAlignment = SyntheticBzImage()
        badAlignment.kernelAlignment = 0x30_0000
        guard case .badFormat = error(badAlignment.bytes) else { return XCTFail() }
        var shortCommandLine = SyntheticBzImage()
        shortCommandLine.commandLineSize = 8
        XCTAssertEqual(error(shortCommandLine.bytes, commandLine: "console=ttyS0"),
                       .commandLineTooLong(length: 13, limit: 8))
        var huge = SyntheticBzImage()
        huge.initSize = 64 << 20
        guard case .doesNotFit = error(huge.bytes) else { return XCTFail() }
        let bigInitrd = ByteImage([UInt8](repeating: 1, count: 30 << 20))
        guard case .doesNotFit = error(SyntheticBzImage().bytes, initrd: bigInitrd) else { return XCTFail() }
        let tiny = try GuestMemory(size: 1 << 20)
        guard case .doesNotFit = error(SyntheticBzImage().bytes, ram: tiny) else { return XCTFail() }
    }
}
