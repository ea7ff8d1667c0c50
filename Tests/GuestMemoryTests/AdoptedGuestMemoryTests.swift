import GuestMemory
import SharedMemory
import SystemPackage
import XCTest

/// Guest RAM handed to another process (the block service's view of
/// vmmd's RAM): the same bytes, and every bad layout refused.
final class AdoptedGuestMemoryTests: XCTestCase {
    private let page: UInt64 = 4096

    private func duplicate(_ memory: GuestMemory) throws -> FileDescriptor {
        try memory.memfd.fd.duplicate()
    }

    func testAdoptedRAMSharesTheBytesOfEachRegion() throws {
        let ram = try GuestMemory(size: 4 * page)
        // Two regions, the second at 1 MiB backed by the memfd's last two pages.
        let adopted = try GuestMemory(adopting: try duplicate(ram), regions: [
            GuestRegion(guestAddress: 0, size: 2 * page, memfdOffset: 0),
            GuestRegion(guestAddress: 1 << 20, size: 2 * page, memfdOffset: 2 * page),
        ])
        try ram.write([1, 2, 3], at: page)
        XCTAssertEqual(Array(try adopted.buffer(at: page, length: 3)), [1, 2, 3])
        try adopted.buffer(at: (1 << 20) + 16, length: 2).copyBytes(from: [9, 8])
        XCTAssertEqual(try ram.read(at: 2 * page + 16, count: 2), [9, 8])
    }

    func testBuffersOutsideOrAcrossRegionsAreRefused() throws {
        let ram = try GuestMemory(size: 4 * page)
        let adopted = try GuestMemory(adopting: try duplicate(ram), regions: [
            GuestRegion(guestAddress: 0, size: 2 * page, memfdOffset: 0),
            GuestRegion(guestAddress: 2 * page, size: 2 * page, memfdOffset: 2 * page),
        ])
        XCTAssertThrowsError(try adopted.buffer(at: 4 * page, length: 1))
        XCTAssertThrowsError(try adopted.buffer(at: 2 * page - 1, length: 2), "spans two regions")
        XCTAssertThrowsError(try adopted.buffer(at: UInt64.max - 1, length: 4))
        XCTAssertThrowsError(try adopted.buffer(at: 0, length: -1))
    }

    func testBadLayoutsAreRefused() throws {
        let ram = try GuestMemory(size: 4 * page)
        let layouts: [(String, [GuestRegion])] = [
            ("no regions", []),
            ("past the memfd", [GuestRegion(guestAddress: 0, size: 5 * page, memfdOffset: 0)]),
            ("offset past the memfd", [GuestRegion(guestAddress: 0, size: page, memfdOffset: 4 * page)]),
            ("empty region", [GuestRegion(guestAddress: 0, size: 0, memfdOffset: 0)]),
            ("guest end overflows", [GuestRegion(guestAddress: UInt64.max - 10, size: page, memfdOffset: 0)]),
            ("overlapping", [GuestRegion(guestAddress: 0, size: 2 * page, memfdOffset: 0),
                             GuestRegion(guestAddress: page, size: page, memfdOffset: 2 * page)]),
            ("too many", (0..<65).map { GuestRegion(guestAddress: UInt64($0) * page, size: 16, memfdOffset: 0) }),
        ]
        for (name, regions) in layouts {
            XCTAssertThrowsError(try GuestMemory(adopting: try duplicate(ram), regions: regions), name) { error in
                guard case .unusable? = error as? GuestMemoryError else { return XCTFail("\(name): \(error)") }
            }
        }
    }

    func testMemoryThatCanShrinkIsRefused() throws {
        let unsealed = try Memfd.create(name: "unsealed", size: Int(page), sealedSize: false)
        XCTAssertThrowsError(try GuestMemory(adopting: unsealed.fd, regions: [
            GuestRegion(guestAddress: 0, size: page, memfdOffset: 0),
        ])) { error in
            guard case .unusable? = error as? GuestMemoryError else { return XCTFail("\(error)") }
        }
    }
}
