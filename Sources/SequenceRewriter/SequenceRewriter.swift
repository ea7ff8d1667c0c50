import Packets

/// Keeps the secondary guest's TCP connections in the primary guest's
/// sequence space, on the secondary host.
///
/// The two guests pick different initial sequence numbers. For each
/// connection the rewriter learns the secondary's ISN from the SYN (or
/// SYN/ACK) the secondary guest sends, and the primary's from the first
/// acknowledgment that comes in for it (the client's ACK of the primary's
/// SYN/ACK, or the server's SYN/ACK to the primary's SYN): offset = primary
/// ISN - secondary ISN. From then on the secondary guest's output has
/// `seq + offset`, and its input `ack - offset` (SACK edges likewise), with
/// the checksums updated. TCP timestamps (RFC 7323) get the same treatment:
/// the two guests' timestamp clocks differ by a little, enough for the
/// secondary to reject the client's first ACK (its echo predates the
/// secondary's SYN/ACK) or for the client's PAWS check to drop the
/// secondary's segments after a failover. The timestamp offset is learned
/// alongside: the echo in that first acknowledgment is the primary's SYN
/// timestamp. So the secondary's segments compare directly with the
/// primary's, and after a failover the clients, who only ever saw the
/// primary's numbers, keep talking to the secondary unchanged.
///
/// A checkpoint makes the secondary equal to the primary, sequence numbers
/// included: every offset becomes zero, so the table is emptied. Rewriting
/// continues after a failover, for the connections opened before it.
public final class SequenceRewriter {
    /// The guest's end of a connection and its peer's.
    struct ConnectionKey: Hashable {
        let guest: IPAddress
        let peer: IPAddress
        let guestPort: UInt16
        let peerPort: UInt16
    }

    struct Connection {
        var secondaryISN: UInt32
        /// The timestamp value of the secondary's SYN, if it sent one.
        var secondaryTimestamp: UInt32?
        /// Primary minus secondary sequence number; nil until learned.
        var offset: UInt32?
        /// Primary minus secondary timestamp clock (0 without timestamps).
        var timestampOffset: UInt32 = 0
        var lastSeen: UInt64
    }

    /// Connections beyond this many evict the least recently seen half.
    public let capacity: Int
    private var connections: [ConnectionKey: Connection] = [:]
    public private(set) var rewrittenFrames: UInt64 = 0

    public init(capacity: Int = 65_536) {
        self.capacity = capacity
    }

    public var connectionCount: Int { connections.count }

    /// A frame the secondary guest sent: its sequence number moves into the
    /// primary's space. Frames that do not parse pass unchanged.
    public func guestOutput(_ frame: inout [UInt8], at now: UInt64) {
        guard let (tcp, source, destination) = Self.tcp(in: frame) else { return }
        let key = ConnectionKey(guest: source, peer: destination, guestPort: tcp.sourcePort, peerPort: tcp.destinationPort)
        if tcp.flags.contains(.syn) && connections[key]?.secondaryISN != tcp.sequence {
            if connections.count >= capacity { evictOldest() }
            connections[key] = Connection(secondaryISN: tcp.sequence, secondaryTimestamp: tcp.timestamps(in: frame)?.value,
                                          offset: nil, lastSeen: now)
            return
        }
        guard var connection = connections[key] else { return }
        connection.lastSeen = now
        connections[key] = connection
        guard let offset = connection.offset, offset != 0 || connection.timestampOffset != 0 else { return }
        TCPRewrite.rewrite(&frame, tcp: tcp, sequence: tcp.sequence &+ offset,
                           timestampValueShift: connection.timestampOffset)
        rewrittenFrames += 1
    }

    /// A frame for the secondary guest (inbound, mirrored by the primary or,
    /// after failover, from the external side): its acknowledgment moves
    /// into the secondary's space. The first acknowledgment of a new
    /// connection teaches the offset.
    public func guestInput(_ frame: inout [UInt8], at now: UInt64) {
        guard let (tcp, source, destination) = Self.tcp(in: frame), tcp.flags.contains(.ack) else { return }
        let key = ConnectionKey(guest: destination, peer: source, guestPort: tcp.destinationPort, peerPort: tcp.sourcePort)
        guard var connection = connections[key] else { return }
        connection.lastSeen = now
        if connection.offset == nil {
            connection.offset = (tcp.acknowledgment &- 1) &- connection.secondaryISN
            if let secondaryTimestamp = connection.secondaryTimestamp, let echo = tcp.timestamps(in: frame)?.echo {
                connection.timestampOffset = echo &- secondaryTimestamp
            }
        }
        connections[key] = connection
        guard let offset = connection.offset, offset != 0 || connection.timestampOffset != 0 else { return }
        TCPRewrite.rewrite(&frame, tcp: tcp, acknowledgment: tcp.acknowledgment &- offset, sackShift: offset,
                           timestampEchoShift: connection.timestampOffset)
        rewrittenFrames += 1
    }

    /// The secondary now equals the primary: every offset is zero.
    public func checkpointDone() {
        connections.removeAll(keepingCapacity: true)
    }

    /// The offset learned for a connection, seen from the guest.
    public func offset(guest: IPAddress, guestPort: UInt16, peer: IPAddress, peerPort: UInt16) -> UInt32? {
        connections[ConnectionKey(guest: guest, peer: peer, guestPort: guestPort, peerPort: peerPort)]?.offset
    }

    private func evictOldest() {
        let cutoff = connections.values.map(\.lastSeen).sorted()[connections.count / 2]
        connections = connections.filter { $0.value.lastSeen > cutoff }
    }

    private static func tcp(in frame: [UInt8]) -> (TCPHeader, IPAddress, IPAddress)? {
        guard let parsed = try? ParsedFrame.parse(frame) else { return nil }
        switch parsed.network {
        case let .ipv4(ip, .tcp(tcp)): return (tcp, ip.source, ip.destination)
        case let .ipv6(ip, .tcp(tcp)): return (tcp, ip.source, ip.destination)
        default: return nil
        }
    }
}
