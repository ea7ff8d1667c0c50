/// IP protocol numbers this library knows.
public enum IPProtocol {
    public static let hopByHop: UInt8 = 0
    public static let icmp: UInt8 = 1
    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17
    public static let routing: UInt8 = 43
    public static let fragment: UInt8 = 44
    public static let esp: UInt8 = 50
    public static let authentication: UInt8 = 51
    public static let icmpv6: UInt8 = 58
    public static let noNextHeader: UInt8 = 59
    public static let destinationOptions: UInt8 = 60
}

/// The IPv6 fragment extension header's contents.
public struct IPv6Fragment: Sendable, Equatable {
    /// Offset of the fragment header itself in the frame.
    public let headerOffset: Int
    public let identification: UInt32
    /// Fragment offset in bytes.
    public let fragmentOffset: Int
    public let moreFragments: Bool
}

/// An IPv6 header and its extension-header chain, walked and validated up
/// to the upper-layer header.
public struct IPv6Header: Sendable, Equatable {
    public static let length = 40
    /// Longer chains are refused: no legitimate packet needs them, and an
    /// attacker's chain should not cost more than this to walk.
    public static let maximumExtensionHeaders = 8

    public let offset: Int
    public let payloadLength: Int
    public let hopLimit: UInt8
    public let source: IPAddress
    public let destination: IPAddress
    /// The protocol after the extension headers (TCP, UDP, ICMPv6, ...).
    public let upperProtocol: UInt8
    /// Where the upper-layer header starts.
    public let upperOffset: Int
    /// Set when the chain holds a fragment header.
    public let fragment: IPv6Fragment?

    public var end: Int { offset + Self.length + payloadLength }
    public var payload: Range<Int> { upperOffset ..< end }
    public var isFragment: Bool { fragment.map { $0.moreFragments || $0.fragmentOffset != 0 } ?? false }

    public static func parse(_ frame: [UInt8], at offset: Int) throws(PacketError) -> IPv6Header {
        let available = frame.count - offset
        guard available >= length else { throw .truncated(.ipv6, needed: length, available: available) }
        let version = Int(frame[offset] >> 4)
        guard version == 6 else { throw .badField(.ipv6, field: "version", value: version) }
        let payloadLength = Int(frame.u16(at: offset + 4))
        guard length + payloadLength <= available else {
            throw .badLength(.ipv6, field: "payload length", value: payloadLength)
        }
        let end = offset + length + payloadLength
        var next = frame[offset + 6]
        var cursor = offset + length
        var fragment: IPv6Fragment?
        var count = 0
        chain: while true {
            switch next {
            case IPProtocol.hopByHop, IPProtocol.routing, IPProtocol.destinationOptions, IPProtocol.fragment,
                 IPProtocol.authentication:
                count += 1
                guard count <= maximumExtensionHeaders else { throw .unsupported(.ipv6Extension, "chain longer than \(maximumExtensionHeaders)") }
                if next == IPProtocol.hopByHop && cursor != offset + length {
                    throw .badField(.ipv6Extension, field: "hop-by-hop header position", value: cursor - offset)
                }
                guard cursor + 8 <= end else { throw .truncated(.ipv6Extension, needed: 8, available: end - cursor) }
                let headerLength: Int
                switch next {
                case IPProtocol.fragment:
                    headerLength = 8
                    guard fragment == nil else { throw .badField(.ipv6Extension, field: "second fragment header", value: cursor - offset) }
                    let offsetAndFlags = frame.u16(at: cursor + 2)
                    fragment = IPv6Fragment(headerOffset: cursor, identification: frame.u32(at: cursor + 4),
                                            fragmentOffset: Int(offsetAndFlags & 0xfff8),
                                            moreFragments: offsetAndFlags & 1 != 0)
                case IPProtocol.authentication:
                    headerLength = (Int(frame[cursor + 1]) + 2) * 4
                default:
                    headerLength = (Int(frame[cursor + 1]) + 1) * 8
                }
                guard cursor + headerLength <= end else {
                    throw .badLength(.ipv6Extension, field: "header extension length", value: headerLength)
                }
                if next == IPProtocol.hopByHop || next == IPProtocol.destinationOptions {
                    try validateOptions(frame, from: cursor + 2, to: cursor + headerLength, isHopByHop: next == IPProtocol.hopByHop)
                }
                next = frame[cursor]
                cursor += headerLength
                if fragment.map({ $0.fragmentOffset != 0 }) ?? false { break chain }
            default:
                break chain
            }
        }
        if payloadLength == 0 && next != IPProtocol.noNextHeader && cursor == offset + length {
            throw .unsupported(.ipv6, "jumbogram (payload length 0)")
        }
        return IPv6Header(offset: offset, payloadLength: payloadLength, hopLimit: frame[offset + 7],
                          source: IPAddress(ipv6: frame, at: offset + 8),
                          destination: IPAddress(ipv6: frame, at: offset + 24),
                          upperProtocol: next, upperOffset: cursor, fragment: fragment)
    }

    /// RFC 8200 options: Pad1 is one byte, every other option is type,
    /// length, data, within the header. A jumbo payload option is refused
    /// (jumbograms are not accepted).
    static func validateOptions(_ frame: [UInt8], from start: Int, to end: Int, isHopByHop: Bool) throws(PacketError) {
        var cursor = start
        while cursor < end {
            let type = frame[cursor]
            if type == 0 {
                cursor += 1
                continue
            }
            guard cursor + 1 < end else { throw .badOption(.ipv6Extension, offset: cursor) }
            let length = Int(frame[cursor + 1])
            guard cursor + 2 + length <= end else { throw .badOption(.ipv6Extension, offset: cursor) }
            if isHopByHop && type == 0xc2 { throw .unsupported(.ipv6Extension, "jumbo payload option") }
            cursor += 2 + length
        }
    }
}
