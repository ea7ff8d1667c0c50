import BlockDevice
import BlockImages
import Glibc
import XCTest

final class OverlayImageTests: XCTestCase {
    var directory = ""

    override func setUp() {
        directory = "/tmp/colo-images-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
    }

    override func tearDown() {
        _ = system("rm -rf \(directory)")
    }

    func testRawImageReadsZerosAfterTrimAndReportsHoles() throws {
        let image = try RawImage(path: "\(directory)/disk.img", createSize: 4 << 20)
        try image.write([UInt8](repeating: 7, count: 65536), at: 1 << 20)
        XCTAssertEqual(try image.read(at: 1 << 20, count: 4), [7, 7, 7, 7])
        let extents = try image.allocation(at: 0, length: 4 << 20)
        XCTAssertTrue(extents.contains { $0.hasData && $0.offset <= 1 << 20 })
        XCTAssertEqual(extents.reduce(0) { $0 + $1.length }, 4 << 20)
        try image.trim(at: 1 << 20, length: 65536, fua: false)
        XCTAssertEqual(try image.read(at: 1 << 20, count: 65536), [UInt8](repeating: 0, count: 65536))
        XCTAssertThrowsError(try image.write([1], at: 4 << 20)) { error in
            guard case BlockError.outOfRange = error else { return XCTFail("\(error)") }
        }
    }

    func testOverlayKeepsBitsAcrossReopenAndEmpties() throws {
        let path = "\(directory)/active.ovl"
        do {
            let overlay = try OverlayImage(path: path, capacity: 1 << 30)
            try [UInt8](repeating: 9, count: 1024).withUnsafeBytes { try overlay.writeSectors($0, first: 10) }
            try overlay.zeroSectors(100..<200)
            XCTAssertEqual(overlay.allocatedSectors, 102)
            XCTAssertEqual(overlay.allocatedRuns(), [10..<12, 100..<200])
        }
        let reopened = try OverlayImage(path: path, capacity: 1 << 30)
        XCTAssertEqual(reopened.allocatedSectors, 102)
        XCTAssertTrue(reopened.isAllocated(11))
        XCTAssertFalse(reopened.isAllocated(12))
        var data = [UInt8](repeating: 0, count: 512)
        try data.withUnsafeMutableBytes { try reopened.readSectors(into: $0, first: 11) }
        XCTAssertEqual(data, [UInt8](repeating: 9, count: 512))
        XCTAssertThrowsError(try OverlayImage(path: path, capacity: 1 << 20), "capacity mismatch")

        // Emptying costs time in proportion to what the overlay holds: a
        // 1 TiB overlay with a few sectors empties at once.
        let huge = try OverlayImage(path: "\(directory)/huge.ovl", capacity: 1 << 40)
        try [UInt8](repeating: 1, count: 4096).withUnsafeBytes { try huge.writeSectors($0, first: 1 << 30) }
        let started = ContinuousClock.now
        try huge.empty()
        XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(50))
        XCTAssertEqual(huge.allocatedSectors, 0)
        XCTAssertFalse(huge.isAllocated(1 << 30))
        try reopened.empty()
        XCTAssertEqual(try OverlayImage(path: path, capacity: 1 << 30).allocatedSectors, 0)
    }

    func testUnallocatedSectorsReadAsZerosAfterAKillBetweenDataAndBit() throws {
        let path = "\(directory)/hidden.ovl"
        _ = try OverlayImage(path: path, capacity: 1 << 30)
        // A blockd killed after writing sector 300's data, before its bit:
        // the data lies in the file (data area at 1 MiB for this size).
        let fd = open(path, O_RDWR)
        let stray = [UInt8](repeating: 5, count: 512)
        XCTAssertEqual(pwrite(fd, stray, 512, off_t((1 << 20) + 300 * 512)), 512)
        close(fd)
        let reopened = try OverlayImage(path: path, capacity: 1 << 30)
        XCTAssertFalse(reopened.isAllocated(300))
        // Marking it allocated as zeros costs no I/O and must read zeros.
        try reopened.zeroSectors(300..<301)
        var data = [UInt8](repeating: 1, count: 512)
        try data.withUnsafeMutableBytes { try reopened.readSectors(into: $0, first: 300) }
        XCTAssertEqual(data, [UInt8](repeating: 0, count: 512))
    }
}
