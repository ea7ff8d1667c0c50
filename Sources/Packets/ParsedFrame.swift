/// The transport layer of an unfragmented IP packet (or of a reassembled one).
public enum TransportHeader: Sendable, Equatable {
    case tcp(TCPHeader)
    case udp(UDPHeader)
    case icmp(ICMPHeader)
    /// Another protocol, or a fragment whose transport header is elsewhere.
    case other
}

/// The network layer of a frame.
public enum NetworkHeader: Sendable, Equatable {
    case arp(ARPPacket)
    case ipv4(IPv4Header, TransportHeader)
    case ipv6(IPv6Header, TransportHeader)
    /// An EtherType this library does not decode.
    case other(etherType: UInt16)
}

/// A whole frame decoded from Ethernet to the transport header. Every
/// length field on the way is checked against the bytes that are really
/// there; ``parse(_:)`` throws a ``PacketError`` for anything that lies.
public struct ParsedFrame: Sendable, Equatable {
    public let ethernet: EthernetHeader
    public let network: NetworkHeader

    public static func parse(_ frame: [UInt8]) throws(PacketError) -> ParsedFrame {
        let ethernet = try EthernetHeader.parse(frame)
        let offset = ethernet.payloadOffset
        let network: NetworkHeader
        switch ethernet.etherType {
        case EtherType.arp:
            network = .arp(try ARPPacket.parse(frame, at: offset))
        case EtherType.ipv4:
            let ip = try IPv4Header.parse(frame, at: offset)
            let transport = ip.isFragment ? TransportHeader.other
                : try parseTransport(frame, protocolNumber: ip.protocolNumber, range: ip.payload, ipv6: false)
            network = .ipv4(ip, transport)
        case EtherType.ipv6:
            let ip = try IPv6Header.parse(frame, at: offset)
            let transport = ip.isFragment ? TransportHeader.other
                : try parseTransport(frame, protocolNumber: ip.upperProtocol, range: ip.payload, ipv6: true)
            network = .ipv6(ip, transport)
        default:
            network = .other(etherType: ethernet.etherType)
        }
        return ParsedFrame(ethernet: ethernet, network: network)
    }

    /// Decodes the transport header in `range` of `bytes`: used for whole
    /// frames and for datagrams reassembled from fragments.
    public static func parseTransport(_ bytes: [UInt8], protocolNumber: UInt8, range: Range<Int>, ipv6: Bool)
        throws(PacketError) -> TransportHeader {
        switch protocolNumber {
        case IPProtocol.tcp: return .tcp(try TCPHeader.parse(bytes, at: range.lowerBound, end: range.upperBound))
        case IPProtocol.udp: return .udp(try UDPHeader.parse(bytes, at: range.lowerBound, end: range.upperBound))
        case IPProtocol.icmp where !ipv6:
            return .icmp(try ICMPHeader.parse(bytes, at: range.lowerBound, end: range.upperBound, layer: .icmp))
        case IPProtocol.icmpv6 where ipv6:
            return .icmp(try ICMPHeader.parse(bytes, at: range.lowerBound, end: range.upperBound, layer: .icmpv6))
        default: return .other
        }
    }
}
