import ColoProtocol
import Foundation
import SwiftProtobuf
import XCTest

final class GeneratedCodeTests: XCTestCase {
    /// The committed Swift code must come from Proto/ as it is now: editing a
    /// .proto without running scripts/gen-proto.sh fails here.
    func testGeneratedCodeMatchesProtoSources() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let process = Process()
        process.executableURL = root.appendingPathComponent("scripts/proto-hash.sh")
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        let current = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(current.count, 64)
        XCTAssertEqual(current, generatedFromProtoSourcesSHA256,
                       "Sources/ColoProtocol/Generated is stale: run scripts/gen-proto.sh")
    }

    /// Bodies of every daemon's range decode to their own case.
    func testBodiesDecodeToTheirCase() throws {
        let hostStatus = try ColoRequest(serializedBytes: [0x08, 0x01, 0xA2, 0x1F, 0x00] as [UInt8])
        guard case .hostStatus? = hostStatus.body else { return XCTFail("\(hostStatus)") }
        var request = ColoRequest()
        request.body = .checkpointStatus(ColoCheckpointStatusRequest())
        let decoded = try ColoRequest(serializedBytes: try request.serializedBytes() as [UInt8])
        guard case .checkpointStatus? = decoded.body else { return XCTFail("\(decoded)") }
    }

    /// A body this build does not know (a newer peer's request) decodes with
    /// an empty body rather than failing, so the daemon can answer
    /// UNKNOWN_REQUEST under the request's own id.
    func testUnknownBodyDecodesAsEmptyBodyWithItsID() throws {
        // Field 1 (id) = 7, then field 999 as a length-delimited empty message.
        let bytes: [UInt8] = [0x08, 0x07, 0xBA, 0x3E, 0x00]
        let request = try ColoRequest(serializedBytes: bytes)
        XCTAssertEqual(request.id, 7)
        XCTAssertNil(request.body)
    }

    func testTruncatedEnvelopeIsRejected() throws {
        var request = ColoRequest()
        request.id = 42
        request.body = .status(ColoStatusRequest())
        let bytes: [UInt8] = try request.serializedBytes()
        XCTAssertThrowsError(try ColoRequest(serializedBytes: Array(bytes.dropLast())))
    }

    func testErrorCodeNamesAreStable() {
        XCTAssertEqual(ColoErrorCode.permissionDenied.name, "permission_denied")
        XCTAssertEqual(ColoErrorCode.unknownRequest.name, "unknown_request")
        XCTAssertEqual(ColoErrorCode(rawValue: 1234)?.name, "code_1234")
    }
}
