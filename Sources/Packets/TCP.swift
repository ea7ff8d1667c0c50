/// TCP header flags.
public struct TCPFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
    public static let urg = TCPFlags(rawValue: 0x20)
}

/// A TCP header with its options validated, as offsets into the buffer.
public struct TCPHeader: Sendable, Equatable {
    public static let minimumLength = 20

    public let offset: Int
    public let headerLength: Int
    public let sourcePort: UInt16
    public let destinationPort: UInt16
    public let sequence: UInt32
    public let acknowledgment: UInt32
    public let flags: TCPFlags
    public let window: UInt16
    /// The segment's data, up to the end of the IP packet.
    public let payload: Range<Int>

    /// Sequence space the segment occupies: its data, plus one each for SYN and FIN.
    public var sequenceLength: Int {
        payload.count + (flags.contains(.syn) ? 1 : 0) + (flags.contains(.fin) ? 1 : 0)
    }

    /// Parses the TCP header at `offset` of a segment ending at `end` (the
    /// end of the IP packet, not of the frame).
    public static func parse(_ bytes: [UInt8], at offset: Int, end: Int) throws(PacketError) -> TCPHeader {
        let available = end - offset
        guard available >= minimumLength else { throw .truncated(.tcp, needed: minimumLength, available: available) }
        let headerLength = Int(bytes[offset + 12] >> 4) * 4
        guard headerLength >= minimumLength else { throw .badField(.tcp, field: "data offset", value: headerLength) }
        guard headerLength <= available else { throw .badLength(.tcp, field: "data offset", value: headerLength) }
        try validateOptions(bytes, from: offset + minimumLength, to: offset + headerLength)
        return TCPHeader(offset: offset, headerLength: headerLength, sourcePort: bytes.u16(at: offset),
                         destinationPort: bytes.u16(at: offset + 2), sequence: bytes.u32(at: offset + 4),
                         acknowledgment: bytes.u32(at: offset + 8), flags: TCPFlags(rawValue: bytes[offset + 13] & 0x3f),
                         window: bytes.u16(at: offset + 14), payload: offset + headerLength ..< end)
    }

    /// The timestamp option's value and echo reply (RFC 7323), if present.
    /// The options were validated by ``parse(_:at:end:)``.
    public func timestamps(in bytes: [UInt8]) -> (value: UInt32, echo: UInt32)? {
        var cursor = offset + Self.minimumLength
        let end = offset + headerLength
        while cursor < end {
            switch bytes[cursor] {
            case 0: return nil
            case 1: cursor += 1
            case 8: return (bytes.u32(at: cursor + 2), bytes.u32(at: cursor + 6))
            default: cursor += Int(bytes[cursor + 1])
            }
        }
        return nil
    }

    /// RFC 9293 options: End of Option List and No-Operation are one byte;
    /// others are kind, length, data within the header, with the length the
    /// kind requires for the options whose length is fixed.
    static func validateOptions(_ bytes: [UInt8], from start: Int, to end: Int) throws(PacketError) {
        var cursor = start
        while cursor < end {
            let kind = bytes[cursor]
            switch kind {
            case 0: return
            case 1: cursor += 1; continue
            default: break
            }
            guard cursor + 1 < end else { throw .badOption(.tcp, offset: cursor) }
            let length = Int(bytes[cursor + 1])
            guard length >= 2, cursor + length <= end else { throw .badOption(.tcp, offset: cursor) }
            let valid: Bool
            switch kind {
            case 2: valid = length == 4                                  // maximum segment size
            case 3: valid = length == 3                                  // window scale
            case 4: valid = length == 2                                  // SACK permitted
            case 5: valid = length >= 10 && (length - 2) % 8 == 0        // SACK blocks
            case 8: valid = length == 10                                 // timestamps
            default: valid = true
            }
            guard valid else { throw .badOption(.tcp, offset: cursor) }
            cursor += length
        }
    }
}
