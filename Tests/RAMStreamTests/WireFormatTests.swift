import RAMStream
import XCTest

final class WireFormatTests: XCTestCase {
    func testBitmapRoundTripAndValidation() throws {
        var bitmap = PageBitmap(pageCount: 130)
        for page in [0, 1, 63, 64, 129] { bitmap.insert(page) }
        let bytes = bitmap.serialized
        XCTAssertEqual(bytes.count, 24)
        XCTAssertEqual(bytes[0], 0b11)           // pages 0 and 1: little-endian word 0, bit 0 and 1
        XCTAssertEqual(bytes[7], 0x80)           // page 63: top bit of word 0
        XCTAssertEqual(try PageBitmap(serialized: bytes, pageCount: 130), bitmap)
        XCTAssertEqual(bitmap.count, 5)

        XCTAssertThrowsError(try PageBitmap(serialized: Array(bytes.dropLast()), pageCount: 130)) {
            XCTAssertEqual($0 as? PageBitmapError, .wrongSize(bytes: 23, expected: 24, pages: 130))
        }
        var pastEnd = bytes
        pastEnd[16] |= 0b100                      // page 130 of 130
        XCTAssertThrowsError(try PageBitmap(serialized: pastEnd, pageCount: 130)) {
            XCTAssertEqual($0 as? PageBitmapError, .pageOutOfRange(page: 130, pages: 130))
        }
        XCTAssertEqual(PageBitmap.full(pageCount: 130).count, 130)
    }

    func testRunsAndTake() {
        var bitmap = PageBitmap(pageCount: 256)
        for page in [3, 4, 5, 64, 65, 200] { bitmap.insert(page) }
        for page in 128..<192 { bitmap.insert(page) }
        var runs: [[Int]] = []
        bitmap.forEachRun(inWords: 0..<4) { runs.append([$0, $1]) }
        XCTAssertEqual(runs, [[3, 3], [64, 2], [128, 64], [200, 1]])
        var cursor = 0
        var pages: [Int] = []
        bitmap.take(from: &cursor, limit: 4, into: &pages)
        XCTAssertEqual(pages, [3, 4, 5, 64, 65])
        XCTAssertEqual(cursor, 2)
        XCTAssertEqual(bitmap.count, 65)
    }

    func testPageHeaderRoundTripAndRefusals() throws {
        var bytes = [UInt8](repeating: 0, count: PageFrame.headerSize)
        bytes.withUnsafeMutableBytes {
            PageFrame.Header(kind: .pages, count: 7, sequence: 42).encode(into: $0.baseAddress!)
        }
        let header = try bytes.withUnsafeBytes { try PageFrame.Header.decode($0) }
        XCTAssertEqual(header, PageFrame.Header(kind: .pages, count: 7, sequence: 42))

        func refused(_ mutate: (inout [UInt8]) -> Void, _ expected: String) {
            var copy = bytes
            mutate(&copy)
            XCTAssertThrowsError(try copy.withUnsafeBytes { try PageFrame.Header.decode($0) }) {
                XCTAssertTrue("\($0)".contains(expected), "\($0)")
            }
        }
        refused({ $0[0] = 0x47 }, "bad magic")
        refused({ $0[4] = 9 }, "version 9")
        refused({ $0[5] = 7 }, "unknown page frame kind 7")
        refused({ $0[8] = 0; $0[9] = 0x10 }, "4096 entries")
        refused({ $0[8] = 0 }, "0 entries")
        refused({ $0[13] = 1 }, "reserved")
    }

    func testEntriesOutsideRAMAreRefused() throws {
        XCTAssertEqual(try PageFrame.decodeEntry(PageFrame.entry(page: 9, zero: true).littleEndian, pageCount: 10).page, 9)
        XCTAssertThrowsError(try PageFrame.decodeEntry(PageFrame.entry(page: 10, zero: false).littleEndian, pageCount: 10)) {
            XCTAssertEqual($0 as? RAMStreamError, .pageOutOfRange(page: 10, pages: 10))
        }
        XCTAssertThrowsError(try PageFrame.decodeEntry((UInt64(1) << 60).littleEndian, pageCount: 10))
    }

    func testControlFramesRoundTrip() throws {
        let frames: [ControlFrame] = [
            .hello(.init(memoryBytes: 1 << 30, pageChannels: 4, committedSequence: 0)),
            .deviceState(sequence: 3, bytes: [1, 2, 3]),
            .end(sequence: 3, .init(totalPages: 99, hashChunkBytes: 1 << 20, hashes: [1, 2])),
            .committed(sequence: 3, Verification(checked: true, chunksCompared: 2, chunksDiffering: 1,
                                                 firstDifferenceOffset: 1 << 20)),
            .error("nope"),
        ]
        for frame in frames {
            XCTAssertEqual(try ControlFrame.decode(frame.encoded()), frame)
        }
    }

    /// Random bytes never crash a decoder; they are refused (or, rarely,
    /// decode into something well-formed).
    func testGarbageNeverCrashesDecoders() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5_000 {
            var bytes = (0..<PageFrame.headerSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if Bool.random() { bytes.replaceSubrange(0..<4, with: PageFrame.magic) }
            if Bool.random() { bytes[4] = PageFrame.version }
            _ = try? bytes.withUnsafeBytes { try PageFrame.Header.decode($0) }
            var control = (0..<Int.random(in: 0...64)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if control.count >= 6 && Bool.random() {
                control.replaceSubrange(0..<4, with: ControlFrame.magic)
                control[4] = ControlFrame.version
            }
            _ = try? ControlFrame.decode(control)
        }
    }

    func testZeroPageDetection() {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        XCTAssertTrue(isZeroPage(page))
        for offset in [0, 7, 2048, 4095] {
            page.storeBytes(of: 1, toByteOffset: offset, as: UInt8.self)
            XCTAssertFalse(isZeroPage(page), "byte \(offset)")
            page.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self)
        }
    }
}
