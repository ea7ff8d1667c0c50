/// An ARP packet. Only Ethernet/IPv4 ARP has its addresses decoded; other
/// hardware/protocol pairs are validated for length and compared as bytes.
public struct ARPPacket: Sendable, Equatable {
    public static let request: UInt16 = 1
    public static let reply: UInt16 = 2

    public let offset: Int
    /// Header plus addresses: 8 + 2 * (hardware + protocol address length).
    public let length: Int
    public let operation: UInt16
    /// Sender and target protocol addresses of Ethernet/IPv4 ARP, else nil.
    public let senderAddress: IPAddress?
    public let targetAddress: IPAddress?

    public static func parse(_ frame: [UInt8], at offset: Int) throws(PacketError) -> ARPPacket {
        let available = frame.count - offset
        guard available >= 8 else { throw .truncated(.arp, needed: 8, available: available) }
        let hardwareLength = Int(frame[offset + 4])
        let protocolLength = Int(frame[offset + 5])
        let length = 8 + 2 * (hardwareLength + protocolLength)
        guard length <= available else { throw .truncated(.arp, needed: length, available: available) }
        let isEthernetIPv4 = frame.u16(at: offset) == 1 && frame.u16(at: offset + 2) == EtherType.ipv4
        if isEthernetIPv4 {
            guard hardwareLength == 6, protocolLength == 4 else {
                throw .badLength(.arp, field: "address lengths", value: hardwareLength << 8 | protocolLength)
            }
        }
        return ARPPacket(offset: offset, length: length, operation: frame.u16(at: offset + 6),
                         senderAddress: isEthernetIPv4 ? IPAddress(ipv4: frame, at: offset + 14) : nil,
                         targetAddress: isEthernetIPv4 ? IPAddress(ipv4: frame, at: offset + 24) : nil)
    }
}
