/// The pair's state machine for one host: a pure function of events to
/// actions, with no I/O, so that every path (including the rare ones a
/// failover takes) is tested directly; supervisord performs the actions.
///
/// The rule that keeps a pair from having two primaries: a host that loses
/// its peer may run alone only once the witness has granted it the pair for a
/// new epoch. Epochs only grow, and the witness grants each epoch once, so
/// two hosts cut apart can never both hold the pair.
public struct PairStateMachine: Sendable, Equatable, Codable {
    public private(set) var state: PairState
    public private(set) var role: PairRole
    /// The pair's generation: increases at each failover. A host's claim to
    /// run alone is for `epoch + 1`.
    public private(set) var epoch: UInt64
    /// The epoch being claimed while in `.claiming`, and why.
    public private(set) var claimedEpoch: UInt64?
    public private(set) var claimReason: ClaimReason?
    /// Set when this host took the pair over from a primary that handed it
    /// over (failback): that host comes back as a fresh secondary, and the
    /// resync starts as soon as it connects, without an operator.
    public private(set) var resyncWhenPartnerReturns = false

    public init(role: PairRole, epoch: UInt64 = 0) {
        self.state = .waiting
        self.role = role
        self.epoch = epoch
    }

    /// The machine as persisted before a restart of supervisord. Its host's
    /// daemons restart with it (they are part of its unit), so the guest this
    /// host had is gone. A host that was the only one serving (running alone,
    /// or bringing a partner up meanwhile) boots the guest again from its
    /// disk, as does a primary that never had a secondary; every other host
    /// comes back as a fresh secondary, for the host that holds the pair
    /// (its peer took over, or will) to resync.
    public init(restoring role: PairRole, state: PairState, epoch: UInt64) {
        self.epoch = epoch
        switch (role, state) {
        case (.primary, .alone), (.primary, .resyncing):
            self.role = .primary
            self.state = .alone
        case (.primary, .waiting), (.primary, .syncing):
            self.role = .primary
            self.state = .waiting
        default:
            self.role = .secondary
            self.state = .waiting
        }
    }

    public enum Event: Sendable, Equatable {
        case peerConnected(peerEpoch: UInt64)
        case syncCompleted
        case syncFailed(String)
        case peerLost
        case operatorFailover
        case witnessGranted(epoch: UInt64)
        /// The witness gave the epoch to the other host, or cannot be
        /// reached (either way this host must not run alone).
        case witnessRefused(String)
        case operatorResync
        /// Swap the roles (failback); taken by the primary in lock-step.
        case operatorFailback
        /// The primary's last checkpoint before a handover is loaded: the
        /// secondary claims the pair.
        case handoverRequested
        /// The secondary took the pair for `epoch`: the old primary becomes
        /// its secondary.
        case handoverAccepted(epoch: UInt64)
        /// The handover did not happen (the secondary could not claim the
        /// pair, or the last checkpoint failed): the pair goes on as it was.
        case handoverDeclined(String)
        /// A local daemon the guest depends on died (the VM, its network or
        /// its disk): this host can no longer hold its half of the pair.
        case localFailure(String)
    }

    /// What supervisord must do, in order.
    public enum Action: Sendable, Equatable {
        /// Start the initial sync (primary sends, secondary receives).
        case startSync
        case startLockstep
        /// Stop checkpointing, stop the replication links.
        case stopReplication
        /// Ask the witness for `epoch`.
        case claimFromWitness(epoch: UInt64, reason: ClaimReason)
        /// Secondary taking over: commit the disk overlays, proxyd to
        /// pass-through with gratuitous ARP, the VM runs on as the primary.
        case takeOver
        /// Primary losing its secondary: release held output, run alone.
        case continueAlone
        /// Stop the VM's output for good: another host holds the pair.
        case fence(reason: String)
        /// Persist the state (role, epoch) before anything else happens.
        case persist
        /// Primary: take a last checkpoint and leave the VM paused, asking
        /// the secondary to take the pair over.
        case handOver
        /// Secondary: tell the old primary the pair is ours for `epoch`
        /// (before the link is dropped by `takeOver`).
        case acceptHandover(epoch: UInt64)
        /// Secondary: tell the primary the handover is off, and why.
        case declineHandover(String)
        /// The old primary after a handover: stop the VM and release the
        /// disk, ready to come back as a fresh secondary.
        case standDown
        /// The primary after a declined handover (and why): resume the VM
        /// and the checkpoints.
        case resumeLockstep(String)
        /// Stop heartbeating and close the link, so the peer sees this host
        /// as lost and takes over (or carries on alone).
        case resign
    }

    /// Handles one event. An event that does not apply in the current state
    /// changes nothing and returns no actions (supervisord logs it).
    public mutating func handle(_ event: Event) -> [Action] {
        switch (state, event) {
        case (.waiting, .peerConnected(let peerEpoch)):
            epoch = max(epoch, peerEpoch)
            state = .syncing
            return [.persist, .startSync]
        case (.syncing, .syncCompleted), (.resyncing, .syncCompleted):
            state = .lockstep
            return [.persist, .startLockstep]
        case (.syncing, .syncFailed):
            state = .waiting
            return [.stopReplication, .persist]
        case (.resyncing, .syncFailed):
            state = .alone
            return [.stopReplication, .persist]
        case (.syncing, .peerLost):
            // A half-synced secondary holds nothing worth keeping.
            state = .waiting
            return [.stopReplication, .persist]
        case (.resyncing, .peerLost):
            state = .alone
            return [.stopReplication, .persist]
        case (.lockstep, .peerLost):
            return claim(.heartbeatLost)
        case (.lockstep, .operatorFailover):
            return claim(.operatorFailover)
        case (.claiming, .witnessGranted(let granted)) where granted == claimedEpoch:
            epoch = granted
            let reason = claimReason
            claimedEpoch = nil
            claimReason = nil
            state = .alone
            let wasSecondary = role == .secondary
            role = .primary
            if reason == .handover {
                resyncWhenPartnerReturns = true
                return [.persist, .acceptHandover(epoch: granted), .takeOver]
            }
            return [.persist, wasSecondary ? .takeOver : .continueAlone]
        case (.claiming, .witnessRefused(let reason)) where claimReason == .handover:
            // Nobody else claimed: the primary waits, paused, for our
            // answer. Without the witness's word the pair stays as it was.
            claimedEpoch = nil
            claimReason = nil
            state = .lockstep
            return [.persist, .declineHandover(reason), .startLockstep]
        case (.claiming, .witnessRefused(let reason)):
            claimedEpoch = nil
            claimReason = nil
            state = .fenced
            return [.persist, .fence(reason: reason)]
        case (.alone, .operatorResync):
            state = .resyncing
            return [.persist, .startSync]
        case (let current, .localFailure(let reason)) where current != .fenced:
            state = .fenced
            return [.stopReplication, .persist, .fence(reason: reason), .resign]
        case (.lockstep, .operatorFailback) where role == .primary:
            state = .handingOver
            return [.persist, .handOver]
        case (.lockstep, .handoverRequested) where role == .secondary:
            return claim(.handover)
        case (.handingOver, .handoverAccepted(let granted)) where granted > epoch:
            epoch = granted
            role = .secondary
            state = .waiting
            return [.stopReplication, .persist, .standDown]
        case (.handingOver, .handoverDeclined(let reason)):
            state = .lockstep
            return [.persist, .resumeLockstep(reason)]
        case (.handingOver, .peerLost):
            // Gone before answering: the primary carries on alone, as when
            // any secondary is lost (the witness still decides).
            return claim(.heartbeatLost)
        case (.alone, .peerConnected(let peerEpoch)) where resyncWhenPartnerReturns:
            epoch = max(epoch, peerEpoch)
            resyncWhenPartnerReturns = false
            state = .resyncing
            return [.persist, .startSync]
        default:
            return []
        }
    }

    private mutating func claim(_ reason: ClaimReason) -> [Action] {
        state = .claiming
        claimedEpoch = epoch + 1
        claimReason = reason
        return [.stopReplication, .persist, .claimFromWitness(epoch: epoch + 1, reason: reason)]
    }
}
