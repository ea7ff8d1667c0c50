/// What the comparison has done since start: supervisord and operators read
/// these to see how often and why the pair checkpoints.
public struct ComparisonCounters: Sendable, Equatable {
    /// Primary frames released because the secondary agreed, per protocol.
    public var matched = [UInt64](repeating: 0, count: FlowProtocol.allCases.count)
    /// Mismatches found, per protocol.
    public var mismatched = [UInt64](repeating: 0, count: FlowProtocol.allCases.count)
    /// Primary frames that waited past the compare timeout, per protocol.
    public var expired = [UInt64](repeating: 0, count: FlowProtocol.allCases.count)
    /// Primary frames released by a finished checkpoint rather than a match.
    public var releasedByCheckpoint: UInt64 = 0
    public var checkpointsRequested: UInt64 = 0
    public var checkpointsDone: UInt64 = 0
    /// Secondary frames thrown away: stale (from before the last
    /// checkpoint) or beyond the limit while a checkpoint is pending.
    public var secondaryDiscarded: UInt64 = 0
    /// Frames that did not parse, compared as raw bytes.
    public var malformed: UInt64 = 0
    /// How long released primary frames were held: bucket i counts frames
    /// held less than 2^i microseconds (the last bucket: everything longer).
    public var heldTimeHistogram = [UInt64](repeating: 0, count: ComparisonCounters.histogramBuckets)

    public static let histogramBuckets = 24

    public init() {}

    mutating func recordHeld(nanoseconds: UInt64) {
        let microseconds = nanoseconds / 1000
        let bucket = microseconds == 0 ? 0 : UInt64.bitWidth - microseconds.leadingZeroBitCount
        heldTimeHistogram[min(bucket, Self.histogramBuckets - 1)] += 1
    }
}
