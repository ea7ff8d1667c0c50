import ColoProtocol
import Foundation
import GuestMemory
import VirtualMachine
import XCTest

final class StateBlobTests: XCTestCase {
    private func sample() -> ColoVmSavedState {
        var state = ColoVmSavedState()
        state.memoryBytes = 64 << 20
        state.machine.picMaster = Data(repeating: 1, count: 520)
        state.machine.kvmclockNs = 123_456_789
        var vcpu = ColoVcpuSavedState()
        vcpu.regs = Data((0..<144).map { UInt8($0) })
        var msr = ColoModelSpecificRegister()
        msr.index = 0x10
        msr.value = 42
        vcpu.msrs = [msr]
        state.vcpus = [vcpu]
        state.serial.receiveBuffer = Data("hello".utf8)
        var virtio = ColoVirtioSavedState()
        virtio.pciSlot = 1
        virtio.queues = [ColoVirtqueueSavedState()]
        state.virtio = [virtio]
        return state
    }

    func testRoundTripIsDeterministic() throws {
        let blob = try StateBlob.encode(sample())
        XCTAssertEqual(blob, try StateBlob.encode(sample()))
        XCTAssertEqual(Array(blob.prefix(8)), Array("COLOVMST".utf8))
        XCTAssertEqual(try StateBlob.decode(blob), sample())
    }

    func testCRC32MatchesZlib() {
        XCTAssertEqual(CRC32.checksum(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(CRC32.checksum([UInt8]()), 0)
    }

    func testRefusesWrongMagicVersionChecksumAndLength() throws {
        let blob = try StateBlob.encode(sample())
        var magic = blob
        magic[0] ^= 0xFF
        XCTAssertThrowsError(try StateBlob.decode(magic)) { XCTAssertEqual($0 as? StateBlob.Problem, .badMagic) }
        var version = blob
        version[8] = 2
        XCTAssertThrowsError(try StateBlob.decode(version)) {
            XCTAssertEqual($0 as? StateBlob.Problem, .unsupportedVersion(2))
        }
        var payload = blob
        payload[payload.count - 1] ^= 1
        XCTAssertThrowsError(try StateBlob.decode(payload)) {
            guard case .checksumMismatch = $0 as? StateBlob.Problem else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try StateBlob.decode(blob + [0])) {
            XCTAssertEqual($0 as? StateBlob.Problem, .trailingBytes(1))
        }
        for length in [0, 7, 23, 24, blob.count - 1] {
            XCTAssertThrowsError(try StateBlob.decode(Array(blob.prefix(length))), "prefix \(length)") {
                guard case .truncated = $0 as? StateBlob.Problem else { return XCTFail("\($0)") }
            }
        }
    }

    /// A payload whose checksum is right but which is not a VmSavedState.
    func testRefusesUndecodablePayload() {
        let payload: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF]
        var blob = StateBlob.magic
        withUnsafeBytes(of: StateBlob.version.littleEndian) { blob += $0 }
        withUnsafeBytes(of: CRC32.checksum(payload).littleEndian) { blob += $0 }
        withUnsafeBytes(of: UInt64(payload.count).littleEndian) { blob += $0 }
        XCTAssertThrowsError(try StateBlob.decode(blob + payload)) {
            guard case .undecodable = $0 as? StateBlob.Problem else { return XCTFail("\($0)") }
        }
    }

    /// Random damage never crashes the decoder and is always caught.
    func testFuzzedBlobsAreRefused() throws {
        let blob = try StateBlob.encode(sample())
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var damaged = blob
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let at = Int.random(in: 0..<damaged.count, using: &generator)
                damaged[at] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) {
                damaged = Array(damaged.prefix(Int.random(in: 0...damaged.count, using: &generator)))
            }
            if damaged == blob { continue }
            XCTAssertThrowsError(try StateBlob.decode(damaged))
        }
    }

    func testDeviceWriteBitmapDrainsIntoTheHandOffFormat() {
        let bitmap = DirtyPageBitmap(pages: 130)
        bitmap.mark(memfdOffset: 4096 * 63, length: 4097)       // pages 63 and 64
        bitmap.mark(memfdOffset: 4096 * 129, length: 1)         // the last page
        var words = [UInt64](repeating: 0, count: 3)
        words[0] = 1
        XCTAssertEqual(words.withUnsafeMutableBufferPointer { bitmap.drain(into: $0.baseAddress!) }, 3)
        XCTAssertEqual(words, [1 | 1 << 63, 1, 1 << 1])
        var again = [UInt64](repeating: 0, count: 3)
        XCTAssertEqual(again.withUnsafeMutableBufferPointer { bitmap.drain(into: $0.baseAddress!) }, 0)
        XCTAssertEqual(again, [0, 0, 0])
    }
}
