import ColoProtocol
import PairActuation
import PairConfiguration
import PairMetrics

/// The real pair behind supervisord's requests: the supervisor's operator
/// commands and the replication's checkpoints.
extension HostPair: PairControl {
    func report() -> ColoPairReport {
        var report = supervisor.report()
        report.peer = "\(configuration.pair.peer)"
        return report
    }

    func checkpoint() throws(PairCommandError) -> ColoCheckpointSummary {
        let record: CheckpointRecord
        do {
            record = try replication.requestCheckpoint()
        } catch {
            switch error {
            case .state(let detail): throw .refused("\(detail) (the pair is \(supervisor.state.rawValue))")
            case .timedOut: throw .timedOut("\(error)")
            case .daemon: throw .unavailable("\(error)")
            case .peer, .system: throw .failed("\(error)")
            }
        }
        var summary = ColoCheckpointSummary()
        summary.id = record.sequence
        summary.trigger = record.trigger.rawValue
        summary.pauseUs = UInt64(clamping: record.pause.components.seconds * 1_000_000
            + record.pause.components.attoseconds / 1_000_000_000_000)
        summary.msAgo = UInt64(clamping: (ContinuousClock.now - record.at).components.seconds * 1000)
        return summary
    }

    func failover() throws(PairCommandError) {
        guard supervisor.operatorFailover() else {
            throw .refused("failover is taken in lock-step only; the pair is \(supervisor.state.rawValue)")
        }
    }

    func resync(peer: SocketAddress?) throws(PairCommandError) {
        if let peer, peer != configuration.pair.peer {
            throw .refused("this host resyncs with its configured peer \(configuration.pair.peer), not \(peer)")
        }
        guard supervisor.operatorResync() else {
            throw .refused("resync is taken while running alone only; the pair is \(supervisor.state.rawValue)")
        }
    }

    /// A planned swap of the roles needs the replication turned round in
    /// one step (proxyd, checkpointd and blockd directions, the secondary's
    /// disk committed); the actuator does not do that yet, so the command
    /// is refused rather than swapping the roles in name only. The same
    /// result, with a short outage: `coloctl failover` on the secondary,
    /// then the old primary restarted fresh and `coloctl resync`.
    func failback() throws(PairCommandError) {
        throw .refused("failback is not supported yet: run coloctl failover on the secondary, "
                       + "then bring the old primary back as a fresh secondary and run coloctl resync")
    }
}
