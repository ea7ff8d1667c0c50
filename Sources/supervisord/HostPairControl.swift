import Durations
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

    /// A planned swap of the roles, led by the primary: a last checkpoint,
    /// the secondary takes the pair over (the witness grants it a new epoch)
    /// with the clients' connections, and this host comes back as its
    /// secondary through a resync.
    func failback() throws(PairCommandError) {
        guard supervisor.role == .primary else {
            throw .refused("failback is led by the primary: run it on \(configuration.pair.peer)'s host")
        }
        guard supervisor.operatorFailback() else {
            throw .refused("failback is taken in lock-step only; the pair is \(supervisor.state.rawValue)")
        }
    }
}
