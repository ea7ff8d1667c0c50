/// Where one host of a protected pair stands. The pair is two of these,
/// one per host, kept consistent by the supervisors' messages and, when the
/// two cannot talk, by the witness.
///
///     waiting --peer connected--> syncing --synced--> lockstep
///     lockstep --peer lost--> claiming --granted--> alone
///                                      --denied---> fenced
///     alone --resync(partner)--> resyncing --synced--> lockstep
///     lockstep --failover (operator)--> claiming
///     lockstep --failback (operator, primary)--> handingOver
///         --the secondary took the pair--> waiting (as the secondary)
///         --it declined--> lockstep
public enum PairState: String, Sendable, Equatable, CaseIterable, Codable {
    /// Configured, waiting for the peer to connect.
    case waiting
    /// The initial sync (RAM migration and disk) is under way.
    case syncing
    /// Both VMs run in lock-step; checkpoints keep them identical.
    case lockstep
    /// The peer is gone; asking the witness whether this host may run alone.
    case claiming
    /// Running alone as the only primary (after a failover).
    case alone
    /// Bringing a new partner up to date while running alone.
    case resyncing
    /// A planned swap of roles (failback): the primary took a last
    /// checkpoint and keeps its VM paused while the secondary claims the
    /// pair; then it becomes the secondary, or resumes if refused.
    case handingOver = "handing_over"
    /// The witness gave the pair to the other host: this host's VM must
    /// produce no output (a cut link must never make two primaries).
    case fenced
}

/// What a host does in the pair.
public enum PairRole: String, Sendable, Equatable, Codable {
    /// Its VM's output reaches the clients.
    case primary
    /// Its VM runs in the shadow of the primary's and takes over on failure.
    case secondary
}

/// Why a host claims the pair for itself.
public enum ClaimReason: String, Sendable, Equatable, Codable {
    case heartbeatLost = "heartbeat_lost"
    case operatorFailover = "operator_failover"
    /// The primary handed the pair over at a checkpoint (failback).
    case handover
}
