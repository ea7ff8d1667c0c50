import ColoProtocol
import Foundation
import SwiftProtobuf

/// The framing of a saved VM state: 8 bytes magic "COLOVMST", the format
/// version (u32), a CRC-32 of the payload (u32), the payload's length
/// (u64), all little-endian, then the payload: a `VmSavedState` message.
/// Checked whole before anything is loaded: a blob from another format, a
/// damaged or a cut one never reaches the VM.
public enum StateBlob {
    public static let magic: [UInt8] = Array("COLOVMST".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 24
    /// Far above any real state (a few KiB per vCPU): a bound for readers.
    public static let maximumSize = 64 << 20

    /// Why a blob was refused.
    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case truncated(have: Int, need: Int)
        case badMagic
        case unsupportedVersion(UInt32)
        case trailingBytes(Int)
        case checksumMismatch(stored: UInt32, computed: UInt32)
        case undecodable(String)
        case tooLarge(Int)
        case unencodable(String)

        public var description: String {
            switch self {
            case let .truncated(have, need): return "state blob truncated: \(have) bytes, \(need) expected"
            case .badMagic: return "not a VM state blob (bad magic)"
            case let .unsupportedVersion(version): return "state blob version \(version); this vmmd reads version \(StateBlob.version)"
            case let .trailingBytes(count): return "\(count) bytes after the state blob's payload"
            case let .checksumMismatch(stored, computed):
                return "state blob checksum mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))"
            case let .undecodable(detail): return "state blob payload does not decode: \(detail)"
            case let .tooLarge(size): return "state blob of \(size) bytes exceeds \(StateBlob.maximumSize)"
            case let .unencodable(detail): return "state does not encode: \(detail)"
            }
        }
    }

    public static func encode(_ state: ColoVmSavedState) throws(Problem) -> [UInt8] {
        // Deterministic: two saves of the same state give the same bytes.
        var options = BinaryEncodingOptions()
        options.useDeterministicOrdering = true
        let payload: [UInt8]
        do {
            payload = try state.serializedBytes(options: options)
        } catch {
            throw .unencodable("\(error)")
        }
        var blob = magic
        blob.reserveCapacity(headerSize + payload.count)
        append(version, to: &blob)
        append(CRC32.checksum(payload), to: &blob)
        append(UInt64(payload.count), to: &blob)
        blob += payload
        return blob
    }

    public static func decode(_ blob: [UInt8]) throws(Problem) -> ColoVmSavedState {
        guard blob.count <= maximumSize else { throw .tooLarge(blob.count) }
        guard blob.count >= headerSize else { throw .truncated(have: blob.count, need: headerSize) }
        guard Array(blob[0..<8]) == magic else { throw .badMagic }
        let version = read(UInt32.self, blob, at: 8)
        guard version == Self.version else { throw .unsupportedVersion(version) }
        let stored = read(UInt32.self, blob, at: 12)
        let length = read(UInt64.self, blob, at: 16)
        guard length <= UInt64(blob.count - headerSize) else {
            throw .truncated(have: blob.count, need: headerSize + Int(min(length, UInt64(maximumSize))))
        }
        guard Int(length) == blob.count - headerSize else { throw .trailingBytes(blob.count - headerSize - Int(length)) }
        let payload = blob[headerSize...]
        let computed = CRC32.checksum(payload)
        guard computed == stored else { throw .checksumMismatch(stored: stored, computed: computed) }
        do {
            return try ColoVmSavedState(serializedBytes: Array(payload))
        } catch {
            throw .undecodable("\(error)")
        }
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to blob: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { blob += $0 }
    }

    private static func read<T: FixedWidthInteger>(_ type: T.Type, _ blob: [UInt8], at offset: Int) -> T {
        blob.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib's crc32.
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    public static func checksum(_ bytes: some Collection<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
