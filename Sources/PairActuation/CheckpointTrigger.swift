/// Why a checkpoint was taken (DESIGN.md section 4, step 1).
public enum CheckpointTrigger: String, Sendable, CaseIterable {
    /// The first checkpoint after a live migration: its stop-and-copy.
    case migration
    /// The maximum interval passed.
    case periodic
    /// proxyd saw the two guests' output differ.
    case mismatch
    /// A primary packet found no secondary match within the compare timeout.
    case timeout
    /// proxyd's queue of held packets reached its limit.
    case queueFull = "queue_full"
    /// An operator asked (`coloctl checkpoint`).
    case `operator`
}

/// One finished checkpoint, as the primary saw it.
public struct CheckpointRecord: Sendable {
    public var sequence: UInt64
    public var trigger: CheckpointTrigger
    /// Primary pause to resume: the figure that matters (DESIGN.md section 4).
    public var pause: Duration
    public var pagesSent: UInt64
    public var bytesSent: UInt64
    public var at: ContinuousClock.Instant
}
