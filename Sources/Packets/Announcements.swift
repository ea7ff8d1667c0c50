/// Frames a host sends to tell its neighbours where an address now lives:
/// what a surviving replica sends on the external network after failover,
/// so that switches and neighbours' caches learn its port at once.
public enum AddressAnnouncement {
    /// A gratuitous ARP request (RFC 5227 ARP announcement): sender and
    /// target protocol address both `address`, broadcast.
    public static func gratuitousARP(mac: MACAddress, address: IPAddress) -> [UInt8] {
        precondition(address.isIPv4, "gratuitous ARP announces IPv4 addresses")
        var frame = MACAddress.broadcast.bytes + mac.bytes + EtherType.arp.bigEndianBytes
        frame += [0, 1] + EtherType.ipv4.bigEndianBytes + [6, 4] + ARPPacket.request.bigEndianBytes
        frame += mac.bytes + address.bytes + [0, 0, 0, 0, 0, 0] + address.bytes
        return frame + [UInt8](repeating: 0, count: 60 - frame.count)
    }

    /// An unsolicited Neighbor Advertisement (RFC 4861 7.2.6) to all-nodes,
    /// override flag set, with the target link-layer address option.
    public static func unsolicitedNeighborAdvertisement(mac: MACAddress, address: IPAddress) -> [UInt8] {
        precondition(!address.isIPv4, "neighbor advertisements announce IPv6 addresses")
        let allNodes = IPAddress("ff02::1")!
        var icmp: [UInt8] = [136, 0, 0, 0, 0x20, 0, 0, 0] + address.bytes + [2, 1] + mac.bytes
        let pseudo = InternetChecksum.pseudoHeaderSum(source: address, destination: allNodes,
                                                      protocolNumber: IPProtocol.icmpv6, length: icmp.count)
        icmp.setU16(InternetChecksum.finish(InternetChecksum.sum(icmp, 0..<icmp.count, initial: pseudo)), at: 2)
        let ipv6: [UInt8] = [0x60, 0, 0, 0] + UInt16(icmp.count).bigEndianBytes + [IPProtocol.icmpv6, 255]
            + address.bytes + allNodes.bytes
        return [0x33, 0x33, 0, 0, 0, 1] + mac.bytes + EtherType.ipv6.bigEndianBytes + ipv6 + icmp
    }
}
