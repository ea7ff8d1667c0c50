/// EtherType values this library knows.
public enum EtherType {
    public static let ipv4: UInt16 = 0x0800
    public static let arp: UInt16 = 0x0806
    public static let ipv6: UInt16 = 0x86dd
    public static let vlan: UInt16 = 0x8100
    public static let qinq: UInt16 = 0x88a8
}

/// An Ethernet II header with up to two VLAN tags (802.1Q, 802.1ad), as
/// offsets into the frame: nothing is copied.
public struct EthernetHeader: Sendable, Equatable {
    /// The largest frame accepted: a 64 KiB IP packet behind two VLAN tags
    /// (what a guest with large offloads can hand over), nothing beyond.
    public static let maximumFrameLength = 65_535 + 14 + 8
    public static let minimumLength = 14

    public let destination: MACAddress
    public let source: MACAddress
    /// The VLAN tag control fields, outermost first (empty when untagged).
    public let vlanTags: [UInt16]
    /// The EtherType after any VLAN tags.
    public let etherType: UInt16
    /// Where the network-layer packet starts.
    public let payloadOffset: Int

    public static func parse(_ frame: [UInt8]) throws(PacketError) -> EthernetHeader {
        guard frame.count <= maximumFrameLength else { throw .oversized(length: frame.count) }
        guard frame.count >= minimumLength else {
            throw .truncated(.ethernet, needed: minimumLength, available: frame.count)
        }
        var offset = 12
        var etherType = frame.u16(at: offset)
        var tags: [UInt16] = []
        while etherType == EtherType.vlan || etherType == EtherType.qinq {
            guard tags.count < 2 else { throw .unsupported(.ethernet, "more than two VLAN tags") }
            guard frame.count >= offset + 6 else {
                throw .truncated(.ethernet, needed: offset + 6, available: frame.count)
            }
            tags.append(frame.u16(at: offset + 2))
            offset += 4
            etherType = frame.u16(at: offset)
        }
        return EthernetHeader(destination: MACAddress(frame: frame, at: 0), source: MACAddress(frame: frame, at: 6),
                              vlanTags: tags, etherType: etherType, payloadOffset: offset + 2)
    }
}
