import GuestMemory
import XCTest

final class GuestMemoryTests: XCTestCase {
    func testAccessOutsideRAMIsRefused() throws {
        let memory = try GuestMemory(size: 1 << 20)
        XCTAssertTrue(memory.memfd.isSizeSealed)
        XCTAssertNoThrow(try memory.store(UInt32(1), at: (1 << 20) - 4))
        XCTAssertThrowsError(try memory.store(UInt32(1), at: (1 << 20) - 3))
        XCTAssertThrowsError(try memory.read(at: UInt64.max - 2, count: 8), "no wrap-around")
        XCTAssertNil(memory.memfdOffset(of: 1 << 20, length: 0))
        XCTAssertThrowsError(try GuestMemory(size: 1000))
    }

    func testRAMAbove3GiBContinuesAt4GiB() throws {
        let memory = try GuestMemory(size: (3 << 30) + (1 << 20))
        XCTAssertEqual(memory.regions.count, 2)
        XCTAssertEqual(memory.regions[1].guestAddress, 1 << 32)
        XCTAssertEqual(memory.memfdOffset(of: (1 << 32) + 16, length: 16), (3 << 30) + 16)
        XCTAssertNil(memory.memfdOffset(of: 0xC000_0000, length: 1), "the PCI hole is not RAM")
    }

    func testDeviceWritesAreTracked() throws {
        let memory = try GuestMemory(size: 1 << 20)
        try memory.write([1, 2, 3], at: 0x1FFF)               // crosses into page 2
        memory.recordWrite(at: 0x8000, length: 0x3001)       // pages 8-11
        _ = try memory.read(at: 0x20000, count: 100)         // reads do not count
        XCTAssertEqual(memory.deviceWrites.takePages(), [1, 2, 8, 9, 10, 11])
        XCTAssertEqual(memory.deviceWrites.takePages(), [], "taking clears")
    }
}
