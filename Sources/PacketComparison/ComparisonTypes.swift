import Packets

/// The protocol family a flow is counted and reported under.
public enum FlowProtocol: Int, CaseIterable, Sendable, CustomStringConvertible {
    case tcp, udp, icmp, arp, other

    public var description: String {
        switch self {
        case .tcp: return "tcp"
        case .udp: return "udp"
        case .icmp: return "icmp"
        case .arp: return "arp"
        case .other: return "other"
        }
    }
}

/// Why the comparison wants a checkpoint.
public enum CheckpointReason: Sendable, Equatable, CustomStringConvertible {
    /// The two guests produced different output.
    case mismatch
    /// A primary frame found no secondary match within the compare timeout.
    case expired
    /// More frames are held than the queue limit allows (frames are never dropped).
    case queueFull

    public var description: String {
        switch self {
        case .mismatch: return "mismatch"
        case .expired: return "expired"
        case .queueFull: return "queue_full"
        }
    }
}

/// A checkpoint request: what diverged, where, and when it was seen.
public struct CheckpointRequest: Sendable, Equatable {
    public let reason: CheckpointReason
    public let flowProtocol: FlowProtocol
    /// The flow in words, e.g. "tcp 10.0.0.2:80 > 10.0.0.1:40000".
    public let flow: String
    /// Engine time (ns) at which the cause was seen.
    public let time: UInt64
}

/// What the comparison asks its driver to do, in order.
public enum ComparisonOutput: Sendable, Equatable {
    /// Send this primary frame to the external side: the secondary agreed.
    case release([UInt8])
    /// Ask for a checkpoint. At most one is outstanding; the next comes
    /// only after ``ComparisonEngine/checkpointDone(at:)``.
    case checkpoint(CheckpointRequest)
    /// Frames of a mismatch, for a debugging capture (either may be absent).
    case mismatch(primary: [[UInt8]], secondary: [UInt8]?)
}

/// Comparison parameters.
public struct ComparisonSettings: Sendable, Equatable {
    /// How long a primary frame may wait for its secondary match (ns).
    public var compareTimeout: UInt64
    /// Held primary frames (or buffered secondary frames) beyond which a
    /// checkpoint is requested.
    public var queueLimit: Int
    /// A flow with nothing held and no traffic for this long is forgotten (ns).
    public var idleFlowTimeout: UInt64

    public init(compareTimeout: UInt64 = 10_000_000, queueLimit: Int = 4096, idleFlowTimeout: UInt64 = 300_000_000_000) {
        self.compareTimeout = compareTimeout
        self.queueLimit = queueLimit
        self.idleFlowTimeout = idleFlowTimeout
    }
}

/// Serial-number arithmetic on 32-bit TCP sequence numbers (RFC 1982).
@inline(__always) func seqLessOrEqual(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: b &- a) >= 0 }
@inline(__always) func seqLess(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: b &- a) > 0 }
