import NBD
import XCTest

final class NBDRequestTests: XCTestCase {
    let terms = NBDExportTerms(size: 1 << 20, readOnly: false, flush: true, trim: true, writeZeroes: true,
                               structuredReplies: false, blockStatus: false)

    func testHeaderRoundTrips() throws {
        let request = NBDRequest(command: .write, flags: NBDCommandFlag.fua, cookie: 0xdead_beef, offset: 4096, length: 512)
        XCTAssertEqual(request.encoded().count, NBDRequest.size)
        XCTAssertEqual(try NBDRequest.parse(request.encoded()), request)
    }

    func testBadMagicIsRejected() {
        var bytes = NBDRequest(command: .read, cookie: 1, length: 1).encoded()
        bytes[0] ^= 0xff
        XCTAssertThrowsError(try NBDRequest.parse(bytes)) { error in
            guard case NBDProtocolError.badMagic = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try NBDRequest.parse(Array(bytes.prefix(10))))
    }

    func testDispositions() {
        func check(_ request: NBDRequest, _ terms: NBDExportTerms? = nil) -> NBDDisposition {
            request.disposition(under: terms ?? self.terms)
        }
        XCTAssertEqual(check(NBDRequest(command: .read, cookie: 1, offset: 0, length: 4096)), .serve(.read))
        XCTAssertEqual(check(NBDRequest(command: .disconnect, cookie: 1)), .disconnect)
        // Beyond the end: ENOSPC for writes (payload still discarded), EINVAL for reads.
        guard case .reject(NBDErrno.enospc, 4096, _) = check(NBDRequest(command: .write, cookie: 1, offset: (1 << 20) - 1, length: 4096)) else {
            return XCTFail("write beyond the end")
        }
        guard case .reject(NBDErrno.einval, 0, _) = check(NBDRequest(command: .read, cookie: 1, offset: UInt64.max - 10, length: 4096)) else {
            return XCTFail("read beyond the end (offset overflow)")
        }
        guard case .reject(NBDErrno.einval, 0, _) = check(NBDRequest(type: 99, flags: 0, cookie: 1, offset: 0, length: 1)) else {
            return XCTFail("unknown command")
        }
        guard case .reject(NBDErrno.einval, 512, _) = check(NBDRequest(command: .write, flags: 0x80, cookie: 1, length: 512)) else {
            return XCTFail("unknown flag")
        }
        guard case .rejectAndClose(NBDErrno.einval, _) = check(NBDRequest(command: .write, cookie: 1, length: UInt32.max)) else {
            return XCTFail("huge write")
        }
        guard case .reject(NBDErrno.einval, 0, _) = check(NBDRequest(command: .read, cookie: 1, length: UInt32.max)) else {
            return XCTFail("huge read")
        }
        var readOnly = terms
        readOnly.readOnly = true
        guard case .reject(NBDErrno.eperm, 8, _) = check(NBDRequest(command: .write, cookie: 1, length: 8), readOnly) else {
            return XCTFail("write to read-only export")
        }
        guard case .reject(NBDErrno.einval, 0, _) = check(NBDRequest(command: .blockStatus, cookie: 1, length: 8)) else {
            return XCTFail("block status without a context")
        }
        guard case .reject(NBDErrno.einval, 0, _) = check(NBDRequest(command: .trim, cookie: 1, length: 0)) else {
            return XCTFail("zero length")
        }
    }

    func testInfoRequestParsing() throws {
        let request = NBDInfoRequest(exportName: "disk0", requests: [NBDInfo.blockSize, NBDInfo.name])
        XCTAssertEqual(try NBDInfoRequest.parse(request.encoded()), request)
        var bad = request.encoded()
        bad[3] = 200 // name length beyond the payload
        XCTAssertThrowsError(try NBDInfoRequest.parse(bad))
        XCTAssertThrowsError(try NBDInfoRequest.parse([0, 0]))
        let meta = NBDMetaContextRequest(exportName: "", queries: ["base:allocation"])
        XCTAssertEqual(try NBDMetaContextRequest.parse(meta.encoded()), meta)
        XCTAssertThrowsError(try NBDMetaContextRequest.parse(meta.encoded() + [1]))
    }
}
