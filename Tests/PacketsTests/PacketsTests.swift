import Packets
import XCTest

let clientMAC = MACAddress("02:00:00:00:00:01")!
let guestMAC = MACAddress("52:54:00:00:00:02")!
let v4 = PacketBuilder(sourceMAC: guestMAC, destinationMAC: clientMAC,
                       source: IPAddress("10.0.0.2")!, destination: IPAddress("10.0.0.1")!)
let v6 = PacketBuilder(sourceMAC: guestMAC, destinationMAC: clientMAC,
                       source: IPAddress("fd00::2")!, destination: IPAddress("fd00::1")!)

/// The transport checksum of a parsed frame verifies (sums to 0xffff with the pseudo-header).
func transportChecksumValid(_ frame: [UInt8]) throws -> Bool {
    let parsed = try ParsedFrame.parse(frame)
    let (source, destination, protocolNumber, range): (IPAddress, IPAddress, UInt8, Range<Int>)
    switch parsed.network {
    case let .ipv4(ip, _): (source, destination, protocolNumber, range) = (ip.source, ip.destination, ip.protocolNumber, ip.payload)
    case let .ipv6(ip, _): (source, destination, protocolNumber, range) = (ip.source, ip.destination, ip.upperProtocol, ip.payload)
    default: return false
    }
    let pseudo = protocolNumber == IPProtocol.icmp ? 0
        : InternetChecksum.pseudoHeaderSum(source: source, destination: destination, protocolNumber: protocolNumber,
                                           length: range.count)
    return InternetChecksum.finish(InternetChecksum.sum(frame, range, initial: pseudo)) == 0
}

final class ParsingTests: XCTestCase {
    func testTCPOverIPv4WithOptions() throws {
        let options: [UInt8] = [2, 4, 0x05, 0xb4, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]
        let frame = v4.tcp(sourcePort: 80, destinationPort: 40000, sequence: 1000, acknowledgment: 77,
                           flags: [.ack, .psh], options: options, payload: Array("hello".utf8))
        let parsed = try ParsedFrame.parse(frame)
        XCTAssertEqual(parsed.ethernet.source, guestMAC)
        guard case let .ipv4(ip, .tcp(tcp)) = parsed.network else { return XCTFail("not TCP/IPv4: \(parsed)") }
        XCTAssertEqual(ip.source, IPAddress("10.0.0.2"))
        XCTAssertEqual(ip.protocolNumber, IPProtocol.tcp)
        XCTAssertEqual(tcp.sequence, 1000)
        XCTAssertEqual(tcp.acknowledgment, 77)
        XCTAssertEqual(tcp.flags, [.ack, .psh])
        XCTAssertEqual(tcp.headerLength, 40)
        XCTAssertEqual(Array(frame[tcp.payload]), Array("hello".utf8))
        XCTAssertEqual(tcp.sequenceLength, 5)
        XCTAssertTrue(try transportChecksumValid(frame))
    }

    func testEthernetPaddingIsNotPayload() throws {
        let frame = v4.tcp(sourcePort: 1, destinationPort: 2, sequence: 0, flags: .ack) + [0, 0, 0, 0, 0, 0]
        guard case let .ipv4(_, .tcp(tcp)) = try ParsedFrame.parse(frame).network else { return XCTFail() }
        XCTAssertTrue(tcp.payload.isEmpty)
    }

    func testUDPAndICMPOverBothFamilies() throws {
        for builder in [v4, v6] {
            let udp = builder.udp(sourcePort: 53, destinationPort: 999, payload: [1, 2, 3])
            guard case .udp(let header) = transport(try ParsedFrame.parse(udp)) else { return XCTFail() }
            XCTAssertEqual(Array(udp[header.payload]), [1, 2, 3])
            XCTAssertTrue(try transportChecksumValid(udp))
            let ping = builder.echoRequest(identifier: 7, sequence: 1, payload: [9, 9])
            guard case .icmp(let icmp) = transport(try ParsedFrame.parse(ping)) else { return XCTFail() }
            XCTAssertEqual(icmp.type, builder.source.isIPv4 ? 8 : 128)
            XCTAssertTrue(try transportChecksumValid(ping))
        }
    }

    func testVLANTags() throws {
        let plain = v4.udp(sourcePort: 1, destinationPort: 2, payload: [])
        let tagged = Array(plain[0..<12]) + [0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20] + Array(plain[12...])
        let parsed = try ParsedFrame.parse(tagged)
        XCTAssertEqual(parsed.ethernet.vlanTags, [10, 20])
        XCTAssertEqual(parsed.ethernet.payloadOffset, 22)
        guard case .udp = transport(parsed) else { return XCTFail() }
        let triple = Array(plain[0..<12]) + [0x81, 0, 0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3] + Array(plain[12...])
        XCTAssertThrowsError(try ParsedFrame.parse(triple)) { error in
            XCTAssertEqual(error as? PacketError, .unsupported(.ethernet, "more than two VLAN tags"))
        }
    }

    func testIPv6ExtensionHeadersAndFragments() throws {
        let udp = v6.udp(sourcePort: 5, destinationPort: 6, payload: [1, 2, 3, 4])
        var ipv6 = Array(udp[14..<54])
        let upper = Array(udp[54...])
        // Hop-by-hop (PadN), destination options (Pad1 x6... as PadN), then UDP.
        let hopByHop: [UInt8] = [IPProtocol.destinationOptions, 0, 1, 4, 0, 0, 0, 0]
        let destination: [UInt8] = [IPProtocol.udp, 0, 0, 0, 0, 0, 0, 0]
        ipv6[6] = IPProtocol.hopByHop
        let payloadLength = hopByHop.count + destination.count + upper.count
        ipv6[4] = UInt8(payloadLength >> 8)
        ipv6[5] = UInt8(payloadLength & 0xff)
        let frame = Array(udp[0..<14]) + ipv6 + hopByHop + destination + upper
        guard case let .ipv6(ip, .udp(header)) = try ParsedFrame.parse(frame).network else { return XCTFail() }
        XCTAssertEqual(ip.upperProtocol, IPProtocol.udp)
        XCTAssertEqual(ip.upperOffset, 14 + 40 + 16)
        XCTAssertEqual(Array(frame[header.payload]), [1, 2, 3, 4])

        // A non-first fragment: the transport header is not there.
        var fragmented = ipv6
        fragmented[6] = IPProtocol.fragment
        let fragmentHeader: [UInt8] = [IPProtocol.udp, 0, 0, 8, 0, 0, 0, 42]
        fragmented[4] = 0
        fragmented[5] = UInt8(fragmentHeader.count + 8)
        let fragment = Array(udp[0..<14]) + fragmented + fragmentHeader + [1, 2, 3, 4, 5, 6, 7, 8]
        guard case let .ipv6(fip, .other) = try ParsedFrame.parse(fragment).network else { return XCTFail() }
        XCTAssertEqual(fip.fragment?.headerOffset, 54)
        XCTAssertEqual(fip.fragment?.identification, 42)
        XCTAssertEqual(fip.fragment?.fragmentOffset, 8)
        XCTAssertEqual(fip.fragment?.moreFragments, false)
        XCTAssertTrue(fip.isFragment)
    }

    func testARP() throws {
        let frame = AddressAnnouncement.gratuitousARP(mac: guestMAC, address: IPAddress("10.0.0.2")!)
        guard case let .arp(arp) = try ParsedFrame.parse(frame).network else { return XCTFail() }
        XCTAssertEqual(arp.operation, ARPPacket.request)
        XCTAssertEqual(arp.senderAddress, IPAddress("10.0.0.2"))
        XCTAssertEqual(arp.targetAddress, IPAddress("10.0.0.2"))
        XCTAssertEqual(frame.count, 60)
    }

    func testNeighborAdvertisementChecksum() throws {
        let frame = AddressAnnouncement.unsolicitedNeighborAdvertisement(mac: guestMAC, address: IPAddress("fd00::2")!)
        guard case let .ipv6(ip, .icmp(icmp)) = try ParsedFrame.parse(frame).network else { return XCTFail() }
        XCTAssertEqual(icmp.type, 136)
        XCTAssertEqual(ip.hopLimit, 255)
        XCTAssertTrue(try transportChecksumValid(frame))
    }

    func testAddressText() {
        XCTAssertEqual(IPAddress("fd00::2")?.description, "fd00:0:0:0:0:0:0:2")
        XCTAssertEqual(IPAddress("10.1.2.3")?.description, "10.1.2.3")
        XCTAssertNil(IPAddress("10.1.2"))
        XCTAssertNil(IPAddress("1::2::3"))
        XCTAssertNil(IPAddress("256.1.1.1"))
        XCTAssertEqual(MACAddress("52:54:00:ab:cd:ef")?.description, "52:54:00:ab:cd:ef")
        XCTAssertNil(MACAddress("52:54:00:ab:cd"))
    }

    private func transport(_ parsed: ParsedFrame) -> TransportHeader? {
        switch parsed.network {
        case let .ipv4(_, transport), let .ipv6(_, transport): return transport
        default: return nil
        }
    }
}

final class BadInputTests: XCTestCase {
    let tcpFrame = v4.tcp(sourcePort: 80, destinationPort: 40000, sequence: 1, flags: .ack,
                          options: [2, 4, 5, 0xb4], payload: [1, 2, 3])

    func expect(_ frame: [UInt8], _ expected: PacketError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try ParsedFrame.parse(frame), file: file, line: line) { error in
            XCTAssertEqual(error as? PacketError, expected, file: file, line: line)
        }
    }

    func testTruncatedHeaders() {
        expect(Array(tcpFrame[0..<10]), .truncated(.ethernet, needed: 14, available: 10))
        expect(Array(tcpFrame[0..<20]), .truncated(.ipv4, needed: 20, available: 6))
        // IPv4 header intact but the packet cut: the total length now lies.
        expect(Array(tcpFrame[0..<40]), .badLength(.ipv4, field: "total length", value: 47))
    }

    func testLyingLengths() {
        var frame = tcpFrame
        frame[14] = 0x4f                                   // IHL 60 bytes: options run into TCP
        XCTAssertThrowsError(try ParsedFrame.parse(frame))
        frame = tcpFrame
        frame[14] = 0x44                                   // IHL 16 < 20
        expect(frame, .badField(.ipv4, field: "header length", value: 16))
        frame = tcpFrame
        frame[16] = 0xff                                   // total length beyond the frame
        expect(frame, .badLength(.ipv4, field: "total length", value: 0xff00 | Int(tcpFrame[17])))
        frame = tcpFrame
        frame[34 + 12] = 0xf0                              // TCP data offset 60 > segment
        expect(frame, .badLength(.tcp, field: "data offset", value: 60))
        frame = tcpFrame
        frame[34 + 12] = 0x10                              // TCP data offset 4 < 20
        expect(frame, .badField(.tcp, field: "data offset", value: 4))
        let udp = v4.udp(sourcePort: 1, destinationPort: 2, payload: [1, 2])
        frame = udp
        frame[34 + 5] = 200                                // UDP length beyond the packet
        expect(frame, .badLength(.udp, field: "length", value: 200))
        frame[34 + 5] = 3                                  // UDP length below its header
        expect(frame, .badLength(.udp, field: "length", value: 3))
        let v6udp = v6.udp(sourcePort: 1, destinationPort: 2, payload: [1, 2])
        frame = v6udp
        frame[14 + 5] = 99
        expect(frame, .badLength(.ipv6, field: "payload length", value: 99))
        frame = v6udp
        frame[14 + 4] = 0
        frame[14 + 5] = 0
        expect(frame, .unsupported(.ipv6, "jumbogram (payload length 0)"))
    }

    func testGarbageOptions() {
        var frame = tcpFrame
        frame[54] = 2
        frame[55] = 9                                      // MSS option claiming 9 bytes
        expect(frame, .badOption(.tcp, offset: 54))
        frame[55] = 0                                      // zero-length option (would loop forever)
        expect(frame, .badOption(.tcp, offset: 54))
        frame[54] = 8
        frame[55] = 4                                      // timestamps must be 10 bytes
        expect(frame, .badOption(.tcp, offset: 54))
        // IPv4 option with length running past the header.
        let withOptions = v4.tcp(sourcePort: 1, destinationPort: 2, sequence: 0, flags: .ack)
        var ip = Array(withOptions[14..<34])
        ip[0] = 0x46
        ip[3] = ip[3] &+ 4
        let bad = Array(withOptions[0..<14]) + ip + [7, 9, 0, 0] + Array(withOptions[34...])
        expect(bad, .badOption(.ipv4, offset: 34))
    }

    func testEnormousFrame() {
        let frame = [UInt8](repeating: 0, count: EthernetHeader.maximumFrameLength + 1)
        expect(frame, .oversized(length: frame.count))
    }

    func testIPv6ExtensionLengthLies() {
        let udp = v6.udp(sourcePort: 5, destinationPort: 6, payload: [1, 2, 3, 4])
        var frame = udp
        frame[14 + 6] = IPProtocol.routing                 // the UDP header now reads as a routing header
        frame[54 + 1] = 200                                // claiming 1608 bytes
        expect(frame, .badLength(.ipv6Extension, field: "header extension length", value: 1608))
    }

    /// Every prefix and every single-byte corruption of valid frames of
    /// each kind parses or throws: nothing traps.
    func testEveryPrefixAndByteFlipParsesOrThrows() {
        let frames = [
            tcpFrame,
            v6.tcp(sourcePort: 1, destinationPort: 2, sequence: 3, flags: .syn, options: [2, 4, 5, 0xa0, 4, 2, 1, 1, 1, 3, 3, 7]),
            v4.udp(sourcePort: 1, destinationPort: 2, payload: [3]),
            v6.echoRequest(identifier: 1, sequence: 2, payload: [3]),
            AddressAnnouncement.gratuitousARP(mac: guestMAC, address: IPAddress("10.0.0.2")!),
            AddressAnnouncement.unsolicitedNeighborAdvertisement(mac: guestMAC, address: IPAddress("fd00::2")!),
        ]
        var outcomes = 0
        for frame in frames {
            for length in 0...frame.count {
                _ = try? ParsedFrame.parse(Array(frame[0..<length]))
                outcomes += 1
            }
            for index in frame.indices {
                for value: UInt8 in [0, 1, 0x0f, 0x2c, 0x3b, 0x40, 0x7f, 0x80, 0xff] {
                    var corrupted = frame
                    corrupted[index] = value
                    _ = try? ParsedFrame.parse(corrupted)
                    outcomes += 1
                }
            }
        }
        XCTAssertGreaterThan(outcomes, 3000)
    }
}

final class RewriteTests: XCTestCase {
    func testRewriteKeepsChecksumValid() throws {
        for builder in [v4, v6] {
            var frame = builder.tcp(sourcePort: 80, destinationPort: 4000, sequence: 0xfffffff0, acknowledgment: 12,
                                    flags: [.ack, .psh], payload: Array("some data!".utf8))
            guard case .tcp(let tcp) = transportOf(try ParsedFrame.parse(frame)) else { return XCTFail() }
            TCPRewrite.rewrite(&frame, tcp: tcp, sequence: 0x12345678, acknowledgment: 0xdeadbeef)
            guard case .tcp(let rewritten) = transportOf(try ParsedFrame.parse(frame)) else { return XCTFail() }
            XCTAssertEqual(rewritten.sequence, 0x12345678)
            XCTAssertEqual(rewritten.acknowledgment, 0xdeadbeef)
            XCTAssertTrue(try transportChecksumValid(frame))
            let rebuilt = builder.tcp(sourcePort: 80, destinationPort: 4000, sequence: 0x12345678,
                                      acknowledgment: 0xdeadbeef, flags: [.ack, .psh], payload: Array("some data!".utf8))
            XCTAssertEqual(frame, rebuilt)
        }
    }

    private func transportOf(_ parsed: ParsedFrame) -> TransportHeader? {
        switch parsed.network {
        case let .ipv4(_, transport), let .ipv6(_, transport): return transport
        default: return nil
        }
    }
}
