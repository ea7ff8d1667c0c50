import Packets

/// Identifies a flow: the unit within which the two guests' output must agree
/// in order. TCP flows are keyed by the 4-tuple (plus family); datagram flows
/// by protocol, addresses and ports; non-IP frames by EtherType.
public struct FlowKey: Hashable, Sendable, CustomStringConvertible {
    public let flowProtocol: FlowProtocol
    public let etherType: UInt16
    public let ipProtocol: UInt8
    public let source: IPAddress?
    public let destination: IPAddress?
    public let sourcePort: UInt16
    public let destinationPort: UInt16

    /// Frames that do not parse: compared byte for byte, in one flow.
    static let malformed = FlowKey(flowProtocol: .other, etherType: 0, ipProtocol: 0, source: nil, destination: nil,
                                   sourcePort: 0, destinationPort: 0)

    public var description: String {
        guard let source, let destination else {
            return self == .malformed ? "malformed frames" : "\(flowProtocol) ethertype 0x\(String(etherType, radix: 16))"
        }
        switch flowProtocol {
        case .tcp, .udp: return "\(flowProtocol) \(source):\(sourcePort) > \(destination):\(destinationPort)"
        case .arp: return "arp \(source) > \(destination)"
        default: return "\(flowProtocol) \(source) > \(destination) proto \(ipProtocol)"
        }
    }
}

/// A TCP segment's comparison-relevant fields; the data stays in its frame.
struct SegmentInfo {
    let sequence: UInt32
    let acknowledgment: UInt32
    let flags: TCPFlags
    let payload: ArraySlice<UInt8>

    var dataEnd: UInt32 { sequence &+ UInt32(truncatingIfNeeded: payload.count) &+ (flags.contains(.syn) ? 1 : 0) }
}

/// A fragment of an IP datagram, keyed by what RFC 791/8200 reassembly keys by.
struct FragmentKey: Hashable {
    let source: IPAddress
    let destination: IPAddress
    let ipProtocol: UInt8
    let identification: UInt32
}

struct FragmentPiece {
    let offset: Int
    let moreFragments: Bool
    let data: ArraySlice<UInt8>
}

/// What a frame is, for the comparison.
enum Classified {
    case tcp(FlowKey, SegmentInfo)
    /// Compared whole: `content` is what must be equal (the IP payload for
    /// UDP/ICMP, so TTL, TOS, IP id and checksum may differ).
    case datagram(FlowKey, content: ArraySlice<UInt8>)
    case fragment(FragmentKey, FragmentPiece, isIPv6: Bool)
}

enum FlowClassifier {
    static func classify(_ frame: [UInt8]) -> (Classified, malformed: Bool) {
        let parsed: ParsedFrame
        do {
            parsed = try ParsedFrame.parse(frame)
        } catch {
            return (.datagram(.malformed, content: frame[...]), true)
        }
        switch parsed.network {
        case let .arp(arp):
            let key = FlowKey(flowProtocol: .arp, etherType: EtherType.arp, ipProtocol: 0, source: arp.senderAddress,
                              destination: arp.targetAddress, sourcePort: 0, destinationPort: 0)
            return (.datagram(key, content: frame[0 ..< arp.offset + arp.length]), false)
        case let .ipv4(ip, transport):
            if ip.isFragment {
                let key = FragmentKey(source: ip.source, destination: ip.destination, ipProtocol: ip.protocolNumber,
                                      identification: UInt32(ip.identification))
                return (.fragment(key, FragmentPiece(offset: ip.fragmentOffset, moreFragments: ip.moreFragments,
                                                     data: frame[ip.payload]), isIPv6: false), false)
            }
            return (classify(frame, transport: transport, source: ip.source, destination: ip.destination,
                             ipProtocol: ip.protocolNumber, payload: ip.payload, etherType: EtherType.ipv4), false)
        case let .ipv6(ip, transport):
            if let fragment = ip.fragment, ip.isFragment {
                let key = FragmentKey(source: ip.source, destination: ip.destination, ipProtocol: ip.upperProtocol,
                                      identification: fragment.identification)
                let dataStart = fragment.headerOffset + 8
                return (.fragment(key, FragmentPiece(offset: fragment.fragmentOffset, moreFragments: fragment.moreFragments,
                                                     data: frame[dataStart ..< ip.end]), isIPv6: true), false)
            }
            return (classify(frame, transport: transport, source: ip.source, destination: ip.destination,
                             ipProtocol: ip.upperProtocol, payload: ip.payload, etherType: EtherType.ipv6), false)
        case let .other(etherType):
            let key = FlowKey(flowProtocol: .other, etherType: etherType, ipProtocol: 0, source: nil, destination: nil,
                              sourcePort: 0, destinationPort: 0)
            return (.datagram(key, content: frame[...]), false)
        }
    }

    /// Classifies an IP packet's transport, from a frame or from a
    /// reassembled datagram (`bytes` is then the reassembled payload).
    static func classify(_ bytes: [UInt8], transport: TransportHeader, source: IPAddress, destination: IPAddress,
                         ipProtocol: UInt8, payload: Range<Int>, etherType: UInt16) -> Classified {
        switch transport {
        case let .tcp(tcp):
            let key = FlowKey(flowProtocol: .tcp, etherType: etherType, ipProtocol: ipProtocol, source: source,
                              destination: destination, sourcePort: tcp.sourcePort, destinationPort: tcp.destinationPort)
            return .tcp(key, SegmentInfo(sequence: tcp.sequence, acknowledgment: tcp.acknowledgment, flags: tcp.flags,
                                         payload: bytes[tcp.payload]))
        case let .udp(udp):
            let key = FlowKey(flowProtocol: .udp, etherType: etherType, ipProtocol: ipProtocol, source: source,
                              destination: destination, sourcePort: udp.sourcePort, destinationPort: udp.destinationPort)
            return .datagram(key, content: bytes[payload])
        case .icmp:
            let key = FlowKey(flowProtocol: .icmp, etherType: etherType, ipProtocol: ipProtocol, source: source,
                              destination: destination, sourcePort: 0, destinationPort: 0)
            return .datagram(key, content: bytes[payload])
        case .other:
            let key = FlowKey(flowProtocol: .other, etherType: etherType, ipProtocol: ipProtocol, source: source,
                              destination: destination, sourcePort: 0, destinationPort: 0)
            return .datagram(key, content: bytes[payload])
        }
    }
}
