/// Builds well-formed frames with correct lengths and checksums: the
/// announcements a survivor sends, and the traffic tests and benchmarks
/// feed the comparison with.
public struct PacketBuilder: Sendable {
    public var sourceMAC: MACAddress
    public var destinationMAC: MACAddress
    public var source: IPAddress
    public var destination: IPAddress
    /// IPv4 identification / time to live (IPv6 hop limit) of the packets built.
    public var identification: UInt16 = 0
    public var timeToLive: UInt8 = 64

    public init(sourceMAC: MACAddress, destinationMAC: MACAddress, source: IPAddress, destination: IPAddress) {
        self.sourceMAC = sourceMAC
        self.destinationMAC = destinationMAC
        self.source = source
        self.destination = destination
    }

    /// A TCP segment. `options` must be a multiple of 4 bytes.
    public func tcp(sourcePort: UInt16, destinationPort: UInt16, sequence: UInt32, acknowledgment: UInt32 = 0,
                    flags: TCPFlags, window: UInt16 = 65_535, options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        precondition(options.count % 4 == 0 && options.count <= 40, "TCP options are padded to 4 bytes, at most 40")
        var segment = sourcePort.bigEndianBytes + destinationPort.bigEndianBytes
        segment += [UInt8](repeating: 0, count: 8)
        segment.setU32(sequence, at: 4)
        segment.setU32(acknowledgment, at: 8)
        segment += [UInt8(((20 + options.count) / 4) << 4), flags.rawValue] + window.bigEndianBytes + [0, 0, 0, 0]
        segment += options + payload
        return ip(protocolNumber: IPProtocol.tcp, transport: segment, checksumAt: 16)
    }

    public func udp(sourcePort: UInt16, destinationPort: UInt16, payload: [UInt8]) -> [UInt8] {
        let datagram = sourcePort.bigEndianBytes + destinationPort.bigEndianBytes
            + UInt16(8 + payload.count).bigEndianBytes + [0, 0] + payload
        return ip(protocolNumber: IPProtocol.udp, transport: datagram, checksumAt: 6)
    }

    /// An ICMP echo request (ICMPv6 echo request over IPv6).
    public func echoRequest(identifier: UInt16, sequence: UInt16, payload: [UInt8]) -> [UInt8] {
        let type: UInt8 = source.isIPv4 ? 8 : 128
        let message = [type, 0, 0, 0] + identifier.bigEndianBytes + sequence.bigEndianBytes + payload
        return ip(protocolNumber: source.isIPv4 ? IPProtocol.icmp : IPProtocol.icmpv6, transport: message, checksumAt: 2)
    }

    /// Wraps a transport header and data in IPv4 or IPv6 (by the addresses'
    /// family) and Ethernet, filling in the transport checksum at `checksumAt`.
    public func ip(protocolNumber: UInt8, transport: [UInt8], checksumAt: Int?) -> [UInt8] {
        var transport = transport
        if let checksumAt {
            // ICMPv4 has no pseudo-header; every other checksum here has one.
            let pseudo = protocolNumber == IPProtocol.icmp ? 0
                : InternetChecksum.pseudoHeaderSum(source: source, destination: destination,
                                                   protocolNumber: protocolNumber, length: transport.count)
            transport.setU16(0, at: checksumAt)
            var checksum = InternetChecksum.finish(InternetChecksum.sum(transport, 0..<transport.count, initial: pseudo))
            if protocolNumber == IPProtocol.udp && checksum == 0 { checksum = 0xffff }
            transport.setU16(checksum, at: checksumAt)
        }
        let ethernet = destinationMAC.bytes + sourceMAC.bytes
        if source.isIPv4 {
            var header: [UInt8] = [0x45, 0] + UInt16(20 + transport.count).bigEndianBytes + identification.bigEndianBytes
                + [0x40, 0, timeToLive, protocolNumber, 0, 0] + source.bytes + destination.bytes
            header.setU16(InternetChecksum.finish(InternetChecksum.sum(header, 0..<20)), at: 10)
            return ethernet + EtherType.ipv4.bigEndianBytes + header + transport
        }
        let header: [UInt8] = [0x60, 0, 0, 0] + UInt16(transport.count).bigEndianBytes + [protocolNumber, timeToLive]
            + source.bytes + destination.bytes
        return ethernet + EtherType.ipv6.bigEndianBytes + header + transport
    }
}
