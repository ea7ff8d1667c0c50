/// Why a frame stream cannot be read further. The connection (or file)
/// carrying it is then closed: a peer that sends these is broken or hostile.
public enum FrameStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    case badMagic(UInt32)
    case badVersion(major: UInt16, minor: UInt16)
    case badLinkType(UInt32)
    /// A record longer than the stream's snapshot length or the largest frame.
    case oversizedRecord(Int)
    /// A record whose captured length exceeds its original length.
    case inconsistentRecord(captured: Int, original: Int)

    public var description: String {
        switch self {
        case let .badMagic(magic): return "frame stream: bad magic 0x\(String(magic, radix: 16))"
        case let .badVersion(major, minor): return "frame stream: unsupported version \(major).\(minor)"
        case let .badLinkType(type): return "frame stream: link type \(type), expected Ethernet (1)"
        case let .oversizedRecord(length): return "frame stream: record of \(length) bytes exceeds the limit"
        case let .inconsistentRecord(captured, original):
            return "frame stream: record captures \(captured) of \(original) bytes"
        }
    }
}

/// What a frame stream carries.
public enum FrameRecord: Sendable, Equatable {
    /// An Ethernet frame, with the sender's time (ns since the epoch).
    case frame([UInt8], timestamp: UInt64)
    /// An empty record: the secondary host's mark of a finished checkpoint.
    /// Frames before it predate the checkpoint.
    case checkpointMark
}

/// The framing of every stream of Ethernet frames proxyd writes: the
/// proxyd<->proxyd link and the capture of mismatching frames. It is the
/// classic pcap format (little-endian, microsecond timestamps, LINKTYPE_ETHERNET):
/// a 24-byte header once, then per frame a 16-byte record header (seconds,
/// microseconds, captured length, original length) and the frame. So a
/// capture file is read by tshark/tcpdump as it is, and a recording of the
/// link's payload is as well.
public enum FrameStream {
    public static let magic: UInt32 = 0xa1b2_c3d4
    public static let linkTypeEthernet: UInt32 = 1
    public static let globalHeaderLength = 24
    public static let recordHeaderLength = 16
    /// The snapshot length written in the header: the largest frame accepted.
    public static let maximumRecordLength = 65_535 + 14 + 8

    /// The stream header.
    public static func header() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(globalHeaderLength)
        appendLE32(magic, to: &bytes)
        appendLE16(2, to: &bytes)
        appendLE16(4, to: &bytes)
        appendLE32(0, to: &bytes)                          // thiszone
        appendLE32(0, to: &bytes)                          // sigfigs
        appendLE32(UInt32(maximumRecordLength), to: &bytes)
        appendLE32(linkTypeEthernet, to: &bytes)
        return bytes
    }

    /// Appends one frame's record (header and bytes) to `buffer`.
    public static func appendRecord(_ frame: [UInt8], timestamp: UInt64, to buffer: inout [UInt8]) {
        frame.withUnsafeBytes { appendRecord($0, timestamp: timestamp, to: &buffer) }
    }

    /// Appends one frame's record from bytes a read left in a buffer.
    public static func appendRecord(_ frame: UnsafeRawBufferPointer, timestamp: UInt64, to buffer: inout [UInt8]) {
        precondition(frame.count <= maximumRecordLength, "frames are bounded before they are written")
        appendRecordHeader(length: frame.count, timestamp: timestamp, to: &buffer)
        buffer.append(contentsOf: frame)
    }

    /// Appends the checkpoint mark (an empty record).
    public static func appendCheckpointMark(timestamp: UInt64, to buffer: inout [UInt8]) {
        appendRecordHeader(length: 0, timestamp: timestamp, to: &buffer)
    }

    private static func appendRecordHeader(length: Int, timestamp: UInt64, to buffer: inout [UInt8]) {
        appendLE32(UInt32(truncatingIfNeeded: timestamp / 1_000_000_000), to: &buffer)
        appendLE32(UInt32(truncatingIfNeeded: timestamp % 1_000_000_000 / 1000), to: &buffer)
        appendLE32(UInt32(length), to: &buffer)
        appendLE32(UInt32(length), to: &buffer)
    }

    static func appendLE32(_ value: UInt32, to buffer: inout [UInt8]) {
        buffer.append(UInt8(truncatingIfNeeded: value))
        buffer.append(UInt8(truncatingIfNeeded: value >> 8))
        buffer.append(UInt8(truncatingIfNeeded: value >> 16))
        buffer.append(UInt8(truncatingIfNeeded: value >> 24))
    }

    static func appendLE16(_ value: UInt16, to buffer: inout [UInt8]) {
        buffer.append(UInt8(truncatingIfNeeded: value))
        buffer.append(UInt8(truncatingIfNeeded: value >> 8))
    }
}

/// Reads records from a frame stream arriving in arbitrary pieces (TCP):
/// feed it what was received, take the complete records out.
public struct FrameStreamReader: Sendable {
    private var buffer: [UInt8] = []
    private var head = 0
    private var sawHeader = false

    public init() {}

    /// Bytes received but not yet part of a complete record.
    public var pending: Int { buffer.count - head }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
    }

    public mutating func feed(_ bytes: [UInt8]) {
        buffer.append(contentsOf: bytes)
    }

    /// The next complete record, or nil until more bytes arrive.
    public mutating func next() throws(FrameStreamError) -> FrameRecord? {
        if !sawHeader {
            guard pending >= FrameStream.globalHeaderLength else { return nil }
            let magic = le32(head)
            guard magic == FrameStream.magic else { throw .badMagic(magic) }
            let major = UInt16(truncatingIfNeeded: le32(head + 4)), minor = UInt16(truncatingIfNeeded: le32(head + 4) >> 16)
            guard major == 2, minor == 4 else { throw .badVersion(major: major, minor: minor) }
            let linkType = le32(head + 20)
            guard linkType == FrameStream.linkTypeEthernet else { throw .badLinkType(linkType) }
            head += FrameStream.globalHeaderLength
            sawHeader = true
        }
        guard pending >= FrameStream.recordHeaderLength else { return compact(nil) }
        let captured = Int(le32(head + 8)), original = Int(le32(head + 12))
        guard captured <= FrameStream.maximumRecordLength else { throw .oversizedRecord(captured) }
        guard captured <= original else { throw .inconsistentRecord(captured: captured, original: original) }
        guard pending >= FrameStream.recordHeaderLength + captured else { return compact(nil) }
        let timestamp = UInt64(le32(head)) * 1_000_000_000 + UInt64(le32(head + 4)) * 1000
        let start = head + FrameStream.recordHeaderLength
        head = start + captured
        if captured == 0 { return compact(.checkpointMark) }
        return compact(.frame(Array(buffer[start ..< head]), timestamp: timestamp))
    }

    private mutating func compact(_ record: FrameRecord?) -> FrameRecord? {
        if head == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1 << 20 {
            buffer.removeFirst(head)
            head = 0
        }
        return record
    }

    private func le32(_ offset: Int) -> UInt32 {
        UInt32(buffer[offset]) | UInt32(buffer[offset + 1]) << 8 | UInt32(buffer[offset + 2]) << 16
            | UInt32(buffer[offset + 3]) << 24
    }
}
