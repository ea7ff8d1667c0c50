import FrameLink
import XCTest

final class FrameStreamTests: XCTestCase {
    func testRecordsSurviveAnySplit() throws {
        var stream = FrameStream.header()
        let frames: [[UInt8]] = [Array(0..<60), Array(repeating: 7, count: 1514), [1, 2, 3]]
        FrameStream.appendRecord(frames[0], timestamp: 1_500_000_123_000, to: &stream)
        FrameStream.appendCheckpointMark(timestamp: 0, to: &stream)
        FrameStream.appendRecord(frames[1], timestamp: 2, to: &stream)
        FrameStream.appendRecord(frames[2], timestamp: 3, to: &stream)
        for piece in [1, 7, 16, 1000, stream.count] {
            var reader = FrameStreamReader()
            var records: [FrameRecord] = []
            for start in stride(from: 0, to: stream.count, by: piece) {
                reader.feed(Array(stream[start ..< min(start + piece, stream.count)]))
                while let record = try reader.next() { records.append(record) }
            }
            XCTAssertEqual(records, [.frame(frames[0], timestamp: 1_500_000_123_000), .checkpointMark,
                                     .frame(frames[1], timestamp: 0), .frame(frames[2], timestamp: 0)])
            XCTAssertEqual(reader.pending, 0)
        }
    }

    func testBadStreamsAreRefused() {
        func firstError(_ bytes: [UInt8]) -> FrameStreamError? {
            var reader = FrameStreamReader()
            reader.feed(bytes)
            do {
                while try reader.next() != nil {}
                return nil
            } catch {
                return error
            }
        }
        var header = FrameStream.header()
        header[0] = 0
        XCTAssertEqual(firstError(header), .badMagic(0xa1b2_c300))
        header = FrameStream.header()
        header[20] = 101
        XCTAssertEqual(firstError(header), .badLinkType(101))
        var lying = FrameStream.header()
        lying += [0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]
        XCTAssertEqual(firstError(lying), .oversizedRecord(0x7fff_ffff))
        var inconsistent = FrameStream.header()
        inconsistent += [0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 5, 0, 0, 0]
        XCTAssertEqual(firstError(inconsistent), .inconsistentRecord(captured: 10, original: 5))
        XCTAssertNil(firstError(Array(FrameStream.header().prefix(10))), "incomplete is not an error")
    }
}
