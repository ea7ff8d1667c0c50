/// The frames of the checkpoint control channel (both directions),
/// little-endian:
///
///     header (24 bytes)
///       0  magic "CCTL"
///       4  version (1)         5  kind            6  flags (0)
///       8  payload length     12  reserved (0)   16  sequence
///     payload (length bytes, bounded per kind)
///
///     hello          both ways at pairing: RAM bytes (8), page channels (4),
///                    page size (4); sequence: last committed checkpoint
///     device state   primary -> secondary: vmmd's blob for the sequence
///     end            primary -> secondary: the checkpoint is sent; total
///                    pages (8), hash chunk bytes (4), hash count (4), then
///                    the verify-mode hashes (8 each; none when off)
///     committed      secondary -> primary: the sequence is committed;
///                    verification as in `Verification.encoded`
///     error          either way: why the sender gives up (UTF-8), then it closes
public enum ControlFrame: Sendable, Equatable {
    case hello(Hello)
    case deviceState(sequence: UInt64, bytes: [UInt8])
    case end(sequence: UInt64, End)
    case committed(sequence: UInt64, Verification)
    case error(String)

    public struct Hello: Sendable, Equatable {
        public var memoryBytes: UInt64
        public var pageChannels: UInt32
        public var pageSize: UInt32
        public var committedSequence: UInt64

        public init(memoryBytes: UInt64, pageChannels: UInt32, pageSize: UInt32 = UInt32(PageFrame.pageSize),
                    committedSequence: UInt64) {
            self.memoryBytes = memoryBytes
            self.pageChannels = pageChannels
            self.pageSize = pageSize
            self.committedSequence = committedSequence
        }
    }

    public struct End: Sendable, Equatable {
        public var totalPages: UInt64
        public var hashChunkBytes: UInt32
        public var hashes: [UInt64]

        public init(totalPages: UInt64, hashChunkBytes: UInt32 = 0, hashes: [UInt64] = []) {
            self.totalPages = totalPages
            self.hashChunkBytes = hashChunkBytes
            self.hashes = hashes
        }
    }

    public static let magic: [UInt8] = Array("CCTL".utf8)
    public static let version: UInt8 = 1
    public static let headerSize = 24
    /// The largest device state accepted: vmmd's state is kilobytes; this
    /// bounds what a peer can make the secondary allocate.
    public static let maxDeviceStateBytes = 64 << 20
    public static let maxErrorBytes = 1024
    /// End frames carry at most one hash per MiB of the largest RAM accepted.
    public static let maxHashes = 1 << 20

    enum Kind: UInt8 {
        case hello = 1, deviceState = 2, end = 3, committed = 4, error = 5
    }

    /// The whole frame, header and payload.
    public func encoded() -> [UInt8] {
        var payload = ByteWriter()
        let kind: Kind
        var sequence: UInt64 = 0
        switch self {
        case let .hello(hello):
            kind = .hello
            sequence = hello.committedSequence
            payload.append(hello.memoryBytes)
            payload.append(hello.pageChannels)
            payload.append(hello.pageSize)
        case let .deviceState(seq, bytes):
            kind = .deviceState
            sequence = seq
            payload.bytes = bytes
        case let .end(seq, end):
            kind = .end
            sequence = seq
            payload.append(end.totalPages)
            payload.append(end.hashChunkBytes)
            payload.append(UInt32(end.hashes.count))
            for hash in end.hashes { payload.append(hash) }
        case let .committed(seq, verification):
            kind = .committed
            sequence = seq
            payload.bytes = verification.encoded()
        case let .error(message):
            kind = .error
            payload.bytes = Array(message.utf8.prefix(Self.maxErrorBytes))
        }
        var frame = ByteWriter()
        frame.bytes = Self.magic
        frame.bytes += [Self.version, kind.rawValue, 0, 0]
        frame.append(UInt32(payload.bytes.count))
        frame.append(UInt32(0))
        frame.append(sequence)
        return frame.bytes + payload.bytes
    }

    /// Reads the header and returns the kind, sequence and payload length,
    /// refusing a length over what the kind allows before anything is
    /// allocated for it.
    static func decodeHeader(_ header: [UInt8]) throws(RAMStreamError) -> (Kind, UInt64, Int) {
        var reader = ByteReader(header)
        guard Array(header[0..<4]) == magic else {
            throw .badFrame("bad control magic \(hex(header[0..<4])) (expected \"CCTL\")")
        }
        reader.skip(4)
        let version = reader.byte()
        guard version == Self.version else { throw .badFrame("control frame version \(version), expected \(Self.version)") }
        let rawKind = reader.byte()
        guard let kind = Kind(rawValue: rawKind) else { throw .badFrame("unknown control frame kind \(rawKind)") }
        guard reader.byte() == 0, reader.byte() == 0 else { throw .badFrame("control frame flags are not zero") }
        let length = Int(reader.uint32())
        guard reader.uint32() == 0 else { throw .badFrame("reserved control header field is not zero") }
        let sequence = reader.uint64()
        let limit: Int
        switch kind {
        case .hello: limit = 16
        case .deviceState: limit = maxDeviceStateBytes
        case .end: limit = 16 + 8 * maxHashes
        case .committed: limit = Verification.encodedSize
        case .error: limit = maxErrorBytes
        }
        guard length <= limit else { throw .badFrame("control frame kind \(rawKind) of \(length) bytes (at most \(limit))") }
        return (kind, sequence, length)
    }

    static func decodePayload(kind: Kind, sequence: UInt64, payload: [UInt8]) throws(RAMStreamError) -> ControlFrame {
        var reader = ByteReader(payload)
        switch kind {
        case .hello:
            guard payload.count == 16 else { throw .badFrame("hello of \(payload.count) bytes") }
            return .hello(Hello(memoryBytes: reader.uint64(), pageChannels: reader.uint32(), pageSize: reader.uint32(),
                                committedSequence: sequence))
        case .deviceState:
            return .deviceState(sequence: sequence, bytes: payload)
        case .end:
            guard payload.count >= 16 else { throw .badFrame("end marker of \(payload.count) bytes") }
            let total = reader.uint64()
            let chunk = reader.uint32()
            let count = Int(reader.uint32())
            guard payload.count == 16 + 8 * count else {
                throw .badFrame("end marker announces \(count) hashes in \(payload.count - 16) bytes")
            }
            return .end(sequence: sequence, End(totalPages: total, hashChunkBytes: chunk,
                                                hashes: (0..<count).map { _ in reader.uint64() }))
        case .committed:
            guard payload.count == Verification.encodedSize else { throw .badFrame("commit acknowledgement of \(payload.count) bytes") }
            return .committed(sequence: sequence, Verification(decoding: payload))
        case .error:
            return .error(String(decoding: payload, as: UTF8.self))
        }
    }
}

/// What the secondary's verify-mode comparison found, as the commit
/// acknowledgement carries it.
public struct Verification: Sendable, Equatable {
    public var checked: Bool
    public var chunksCompared: UInt32
    public var chunksDiffering: UInt32
    public var firstDifferenceOffset: UInt64

    public var identical: Bool { checked && chunksDiffering == 0 }

    public static let notChecked = Verification(checked: false, chunksCompared: 0, chunksDiffering: 0,
                                                firstDifferenceOffset: 0)

    public init(checked: Bool, chunksCompared: UInt32, chunksDiffering: UInt32, firstDifferenceOffset: UInt64) {
        self.checked = checked
        self.chunksCompared = chunksCompared
        self.chunksDiffering = chunksDiffering
        self.firstDifferenceOffset = firstDifferenceOffset
    }

    static let encodedSize = 20

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.append(UInt32(checked ? 1 : 0))
        writer.append(chunksCompared)
        writer.append(chunksDiffering)
        writer.append(firstDifferenceOffset)
        return writer.bytes
    }

    init(decoding bytes: [UInt8]) {
        var reader = ByteReader(bytes)
        checked = reader.uint32() != 0
        chunksCompared = reader.uint32()
        chunksDiffering = reader.uint32()
        firstDifferenceOffset = reader.uint64()
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func append(_ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    mutating func append(_ value: UInt64) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }
}

/// Reads fixed-width fields; callers check the length first.
struct ByteReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func skip(_ count: Int) { offset += count }

    mutating func byte() -> UInt8 {
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint32() -> UInt32 {
        defer { offset += 4 }
        return bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    mutating func uint64() -> UInt64 {
        defer { offset += 8 }
        return bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
    }
}

extension ControlFrame {
    /// Decodes one whole frame held in memory (for tests and fuzzing; the
    /// channels decode the header first, to bound what they read).
    public static func decode(_ bytes: [UInt8]) throws(RAMStreamError) -> ControlFrame {
        guard bytes.count >= headerSize else { throw .truncated(received: bytes.count, expected: headerSize) }
        let (kind, sequence, length) = try decodeHeader(Array(bytes[0..<headerSize]))
        guard bytes.count == headerSize + length else {
            throw .truncated(received: bytes.count, expected: headerSize + length)
        }
        return try decodePayload(kind: kind, sequence: sequence, payload: Array(bytes[headerSize...]))
    }
}
