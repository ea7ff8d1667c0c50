/// A UDP header, as offsets into the buffer.
public struct UDPHeader: Sendable, Equatable {
    public static let length = 8

    public let offset: Int
    public let sourcePort: UInt16
    public let destinationPort: UInt16
    /// The datagram's data as the length field bounds it.
    public let payload: Range<Int>

    public static func parse(_ bytes: [UInt8], at offset: Int, end: Int) throws(PacketError) -> UDPHeader {
        let available = end - offset
        guard available >= length else { throw .truncated(.udp, needed: length, available: available) }
        let lengthField = Int(bytes.u16(at: offset + 4))
        guard lengthField >= length, lengthField <= available else {
            throw .badLength(.udp, field: "length", value: lengthField)
        }
        return UDPHeader(offset: offset, sourcePort: bytes.u16(at: offset), destinationPort: bytes.u16(at: offset + 2),
                         payload: offset + length ..< offset + lengthField)
    }
}

/// An ICMP or ICMPv6 message header (type, code, checksum, then the body).
public struct ICMPHeader: Sendable, Equatable {
    public let offset: Int
    public let type: UInt8
    public let code: UInt8
    /// Everything after type and code and checksum.
    public let body: Range<Int>

    public static func parse(_ bytes: [UInt8], at offset: Int, end: Int, layer: PacketLayer) throws(PacketError) -> ICMPHeader {
        // ICMP's fixed header is 8 bytes; ICMPv6's is 4 (its body then varies).
        let needed = layer == .icmp ? 8 : 4
        guard end - offset >= needed else { throw .truncated(layer, needed: needed, available: end - offset) }
        return ICMPHeader(offset: offset, type: bytes[offset], code: bytes[offset + 1], body: offset + 4 ..< end)
    }
}
