/// The protocol layer a parse error was found in.
public enum PacketLayer: String, Sendable, Equatable {
    case ethernet, arp, ipv4, ipv6, ipv6Extension = "ipv6-extension", tcp, udp, icmp, icmpv6
}

/// Why bytes are not a packet this library accepts. Every parser returns one
/// of these instead of trapping, whatever the input: frames come from guests
/// and from the network, and either may lie.
public enum PacketError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Fewer bytes than the header needs.
    case truncated(PacketLayer, needed: Int, available: Int)
    /// A length field claims more (or fewer) bytes than are there or than
    /// the header allows.
    case badLength(PacketLayer, field: String, value: Int)
    /// A version, header-length or type field with a value the layer cannot have.
    case badField(PacketLayer, field: String, value: Int)
    /// A malformed option (kind, length or placement) at this offset of the frame.
    case badOption(PacketLayer, offset: Int)
    /// A frame beyond the largest one accepted (``EthernetHeader/maximumFrameLength``).
    case oversized(length: Int)
    /// A well-formed construct this library deliberately refuses (jumbograms,
    /// more than two VLAN tags, overlong extension-header chains).
    case unsupported(PacketLayer, String)

    public var description: String {
        switch self {
        case let .truncated(layer, needed, available):
            return "\(layer.rawValue): truncated header (\(available) bytes, \(needed) needed)"
        case let .badLength(layer, field, value):
            return "\(layer.rawValue): length field \(field) = \(value) does not fit the packet"
        case let .badField(layer, field, value):
            return "\(layer.rawValue): bad \(field) \(value)"
        case let .badOption(layer, offset):
            return "\(layer.rawValue): malformed option at byte \(offset)"
        case let .oversized(length):
            return "frame of \(length) bytes exceeds \(EthernetHeader.maximumFrameLength)"
        case let .unsupported(layer, what):
            return "\(layer.rawValue): unsupported \(what)"
        }
    }
}
