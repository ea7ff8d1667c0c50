import Glibc
import SharedMemory
import XCTest

final class MemfdTests: XCTestCase {
    func testSealedMemfdCannotBeResized() throws {
        let memfd = try Memfd.create(name: "sealed", size: 1 << 20, sealedSize: true)
        defer { try? memfd.fd.close() }
        XCTAssertTrue(memfd.isSizeSealed)
        XCTAssertEqual(try memfd.size(), 1 << 20)
        XCTAssertEqual(ftruncate(memfd.fd.rawValue, 4096), -1)
        XCTAssertEqual(errno, EPERM)
        XCTAssertEqual(try memfd.size(), 1 << 20)
    }

    func testUnsealedMemfdCanGrow() throws {
        let memfd = try Memfd.create(name: "open", size: 4096, sealedSize: false)
        defer { try? memfd.fd.close() }
        XCTAssertFalse(memfd.isSizeSealed)
        XCTAssertEqual(ftruncate(memfd.fd.rawValue, 8192), 0)
        XCTAssertEqual(try memfd.size(), 8192)
    }
}
