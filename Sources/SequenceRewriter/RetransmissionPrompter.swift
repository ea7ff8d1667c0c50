import Packets

/// Lets a survivor make its guest resend at once what its TCP peers never
/// got.
///
/// When the primary dies, output of the secondary guest that the primary
/// held for comparison (or that was on the replication link) is lost,
/// and the guest resends it only when its retransmission timer fires: in
/// the test guest's lwIP the timer ticks every 500 ms and the timeout is a
/// few ticks, so a client waited 1-1.5 s for an answer the survivor had
/// produced in milliseconds. Three duplicate acknowledgments from the peer
/// trigger the guest's fast retransmit instead (RFC 5681 3.2).
///
/// For that the prompter remembers, per connection, the newest segment
/// each peer sent the guest (its addresses, next sequence number,
/// acknowledgment, window and timestamps: what a duplicate must repeat to
/// count as one) and how far the guest has sent. Everything is kept in the
/// peer's sequence space, the one that never changes: frames from the peer
/// are recorded before the ``SequenceRewriter`` and the guest's after it,
/// and the duplicates it builds go through the rewriter like any frame from
/// the peer. A checkpoint replaces the guest's TCP state with the
/// primary's, so how far the guest has sent is unknown until it sends again
/// (such connections are prompted too: a duplicate acknowledgment with
/// nothing outstanding is ignored). Frames with VLAN tags are not tracked.
public final class RetransmissionPrompter {
    /// Duplicate acknowledgments that start a fast retransmit.
    public static let duplicates = 3

    struct Connection {
        var peerMAC: MACAddress
        var guestMAC: MACAddress
        /// The peer's next sequence number (the guest's rcv_nxt).
        var peerNext: UInt32
        /// The peer's newest acknowledgment (the guest's snd_una), its
        /// window and timestamps; nil before the peer acknowledged anything.
        var acknowledged: UInt32?
        var window: UInt16 = 0
        var timestamps: (value: UInt32, echo: UInt32)?
        var peerFinished = false
        /// How far the guest has sent (its snd_max) in checkpoint epoch
        /// `guestEpoch`; unknown in another epoch.
        var guestNext: UInt32?
        var guestEpoch: UInt64 = 0
        var guestFinished = false
        var lastSeen: UInt64
    }

    /// Connections beyond this many evict the least recently seen half.
    public let capacity: Int
    private var connections: [SequenceRewriter.ConnectionKey: Connection] = [:]
    private var epoch: UInt64 = 0

    public init(capacity: Int = 65_536) {
        self.capacity = capacity
    }

    public var connectionCount: Int { connections.count }

    /// A frame from a peer on its way to the guest, before the rewriter.
    public func peerSegment(_ frame: [UInt8], at now: UInt64) {
        guard let segment = Segment(frame) else { return }
        let key = SequenceRewriter.ConnectionKey(guest: segment.destination, peer: segment.source,
                                                 guestPort: segment.tcp.destinationPort, peerPort: segment.tcp.sourcePort)
        let tcp = segment.tcp
        if tcp.flags.contains(.rst) {
            connections[key] = nil
            return
        }
        let next = tcp.sequence &+ UInt32(tcp.sequenceLength)
        var connection: Connection
        if let known = connections[key], !(tcp.flags.contains(.syn) && !tcp.flags.contains(.ack)) {
            connection = known
            if Self.after(next, connection.peerNext) { connection.peerNext = next }
        } else {
            if connections[key] == nil && connections.count >= capacity { evictOldest() }
            connection = Connection(peerMAC: segment.ethernet.source, guestMAC: segment.ethernet.destination,
                                    peerNext: next, lastSeen: now)
        }
        connection.lastSeen = now
        connection.peerFinished = connection.peerFinished || tcp.flags.contains(.fin)
        if tcp.flags.contains(.ack), connection.acknowledged.map({ !Self.after($0, tcp.acknowledgment) }) ?? true {
            connection.acknowledged = tcp.acknowledgment
            connection.window = tcp.window
            connection.timestamps = tcp.timestamps(in: frame)
            connection.peerMAC = segment.ethernet.source
            connection.guestMAC = segment.ethernet.destination
        }
        if connection.isClosed(in: epoch) {
            connections[key] = nil
        } else {
            connections[key] = connection
        }
    }

    /// A frame the guest sent, after the rewriter.
    public func guestSegment(_ frame: [UInt8], at now: UInt64) {
        guard let segment = Segment(frame) else { return }
        let key = SequenceRewriter.ConnectionKey(guest: segment.source, peer: segment.destination,
                                                 guestPort: segment.tcp.sourcePort, peerPort: segment.tcp.destinationPort)
        guard var connection = connections[key] else { return }
        let tcp = segment.tcp
        if tcp.flags.contains(.rst) {
            connections[key] = nil
            return
        }
        // A SYN is in the guest's own space (the rewriter learns the offset
        // from its acknowledgment) and carries nothing to resend.
        let next = tcp.sequence &+ UInt32(tcp.sequenceLength)
        if !tcp.flags.contains(.syn), connection.guestEpoch != epoch || connection.guestNext.map({ Self.after(next, $0) }) ?? true {
            connection.guestNext = next
            connection.guestEpoch = epoch
        }
        connection.guestFinished = connection.guestFinished || tcp.flags.contains(.fin)
        connection.lastSeen = now
        connections[key] = connection
    }

    /// The guest's TCP state is now the primary's: how far it has sent is
    /// unknown until it sends again.
    public func checkpointDone() {
        epoch &+= 1
    }

    /// For every connection on which the guest may have sent what its peer
    /// has not acknowledged, ``duplicates`` copies of the peer's newest
    /// acknowledgment (no data, same sequence number, window and
    /// timestamps), in the peer's sequence space: pass each through
    /// ``SequenceRewriter/guestInput(_:at:)`` on its way to the guest.
    public func duplicateAcknowledgments() -> [[UInt8]] {
        var frames: [[UInt8]] = []
        for (key, connection) in connections {
            guard let acknowledged = connection.acknowledged else { continue }
            if connection.guestEpoch == epoch, let guestNext = connection.guestNext,
               !Self.after(guestNext, acknowledged) {
                continue
            }
            let builder = PacketBuilder(sourceMAC: connection.peerMAC, destinationMAC: connection.guestMAC,
                                        source: key.peer, destination: key.guest)
            let options = connection.timestamps.map { [1, 1, 8, 10] + bigEndian($0.value) + bigEndian($0.echo) } ?? []
            let frame = builder.tcp(sourcePort: key.peerPort, destinationPort: key.guestPort,
                                    sequence: connection.peerNext, acknowledgment: acknowledged, flags: .ack,
                                    window: connection.window, options: options)
            frames += Array(repeating: frame, count: Self.duplicates)
        }
        return frames
    }

    /// Whether `a` comes after `b` in sequence space (RFC 1982).
    static func after(_ a: UInt32, _ b: UInt32) -> Bool {
        Int32(bitPattern: a &- b) > 0
    }

    private func evictOldest() {
        let cutoff = connections.values.map(\.lastSeen).sorted()[connections.count / 2]
        connections = connections.filter { $0.value.lastSeen > cutoff }
    }

    private func bigEndian(_ value: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
    }

    /// A TCP segment in an untagged frame.
    private struct Segment {
        let ethernet: EthernetHeader
        let tcp: TCPHeader
        let source: IPAddress
        let destination: IPAddress

        init?(_ frame: [UInt8]) {
            guard let parsed = try? ParsedFrame.parse(frame), parsed.ethernet.vlanTags.isEmpty else { return nil }
            switch parsed.network {
            case let .ipv4(ip, .tcp(tcp)): (self.tcp, source, destination) = (tcp, ip.source, ip.destination)
            case let .ipv6(ip, .tcp(tcp)): (self.tcp, source, destination) = (tcp, ip.source, ip.destination)
            default: return nil
            }
            ethernet = parsed.ethernet
        }
    }
}

extension RetransmissionPrompter.Connection {
    /// Both ends sent FIN and the peer acknowledged the guest's: nothing
    /// of the guest's can be outstanding any more.
    func isClosed(in epoch: UInt64) -> Bool {
        guard peerFinished, guestFinished, guestEpoch == epoch, let guestNext, let acknowledged else { return false }
        return !RetransmissionPrompter.after(guestNext, acknowledged)
    }
}
