import PairMetrics

/// One finished checkpoint, as the primary saw it.
public struct CheckpointRecord: Sendable {
    public var sequence: UInt64
    public var trigger: CheckpointTrigger
    /// Primary pause to resume: the figure that matters (DESIGN.md section 4).
    public var pause: Duration
    public var at: ContinuousClock.Instant
}
