/// An IPv4 header with its options validated, as offsets into the frame.
public struct IPv4Header: Sendable, Equatable {
    public static let minimumLength = 20

    public let offset: Int
    public let headerLength: Int
    /// The total-length field: header plus payload. Bytes after it (Ethernet
    /// padding) are not part of the packet.
    public let totalLength: Int
    public let identification: UInt16
    public let dontFragment: Bool
    public let moreFragments: Bool
    /// Fragment offset in bytes.
    public let fragmentOffset: Int
    public let timeToLive: UInt8
    public let protocolNumber: UInt8
    public let source: IPAddress
    public let destination: IPAddress

    public var isFragment: Bool { moreFragments || fragmentOffset != 0 }
    public var payload: Range<Int> { offset + headerLength ..< offset + totalLength }

    public static func parse(_ frame: [UInt8], at offset: Int) throws(PacketError) -> IPv4Header {
        let available = frame.count - offset
        guard available >= minimumLength else { throw .truncated(.ipv4, needed: minimumLength, available: available) }
        let version = Int(frame[offset] >> 4)
        guard version == 4 else { throw .badField(.ipv4, field: "version", value: version) }
        let headerLength = Int(frame[offset] & 0x0f) * 4
        guard headerLength >= minimumLength else { throw .badField(.ipv4, field: "header length", value: headerLength) }
        let totalLength = Int(frame.u16(at: offset + 2))
        guard totalLength >= headerLength, totalLength <= available else {
            throw .badLength(.ipv4, field: "total length", value: totalLength)
        }
        try validateOptions(frame, from: offset + minimumLength, to: offset + headerLength)
        let flagsAndOffset = frame.u16(at: offset + 6)
        let fragmentOffset = Int(flagsAndOffset & 0x1fff) * 8
        guard flagsAndOffset & 0x8000 == 0 else { throw .badField(.ipv4, field: "reserved flag", value: 1) }
        guard fragmentOffset + totalLength - headerLength <= 65_535 else {
            throw .badLength(.ipv4, field: "fragment offset", value: fragmentOffset)
        }
        return IPv4Header(offset: offset, headerLength: headerLength, totalLength: totalLength,
                          identification: frame.u16(at: offset + 4),
                          dontFragment: flagsAndOffset & 0x4000 != 0, moreFragments: flagsAndOffset & 0x2000 != 0,
                          fragmentOffset: fragmentOffset, timeToLive: frame[offset + 8],
                          protocolNumber: frame[offset + 9],
                          source: IPAddress(ipv4: frame, at: offset + 12),
                          destination: IPAddress(ipv4: frame, at: offset + 16))
    }

    /// RFC 791 options: End of List and No-Operation are one byte; every
    /// other option is type, length (at least 2), data, inside the header.
    static func validateOptions(_ frame: [UInt8], from start: Int, to end: Int) throws(PacketError) {
        var cursor = start
        while cursor < end {
            switch frame[cursor] {
            case 0: return
            case 1: cursor += 1
            default:
                guard cursor + 1 < end else { throw .badOption(.ipv4, offset: cursor) }
                let length = Int(frame[cursor + 1])
                guard length >= 2, cursor + length <= end else { throw .badOption(.ipv4, offset: cursor) }
                cursor += length
            }
        }
    }
}
