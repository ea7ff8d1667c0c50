/// What the replication tells the supervisor, which owns the pair's state
/// machine and decides what follows.
public struct ReplicationReports: Sendable {
    /// A local daemon the guest depends on died: the supervisor resigns.
    public var localFailure: @Sendable (String) -> Void
    /// The secondary loaded the primary's last checkpoint before a handover
    /// (failback): the supervisor claims the pair.
    public var handoverRequested: @Sendable () -> Void

    public init(localFailure: @escaping @Sendable (String) -> Void,
                handoverRequested: @escaping @Sendable () -> Void) {
        self.localFailure = localFailure
        self.handoverRequested = handoverRequested
    }
}
