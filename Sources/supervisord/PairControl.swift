import ColoProtocol
import ControlSocket
import PairConfiguration
import PairMetrics

/// What supervisord's control requests (coloctl's status, checkpoint,
/// failover, resync, failback) need of the pair this host belongs to. The
/// real pair (PairSupervisor with its actuator) conforms; the handlers see
/// nothing else of it, so the request protocol and the pair's machinery
/// change independently.
///
/// Every method is called on a control connection's thread. `report` is
/// quick; the commands return once the command was accepted and its
/// immediate step done (`checkpoint` once the checkpoint completed), each
/// bounded by the pair's own timeouts on the peer and the daemons.
protocol PairControl: Sendable {
    /// The pair's state (role, state, epoch, peer); the handlers add the
    /// metrics fields from `metrics`.
    func report() -> ColoPairReport
    /// Where the pair records what it does; read for status and scrapes.
    var metrics: PairMetrics { get }
    /// Takes a checkpoint now (trigger `operator`); returns it once done.
    func checkpoint() throws(PairCommandError) -> ColoCheckpointSummary
    /// This host claims the pair and runs alone.
    func failover() throws(PairCommandError)
    /// Brings a new partner up to date while running alone; `peer` replaces
    /// the configured peer address. Returns once started: progress shows in
    /// `metrics` (a `resync` operation) and the report's state.
    func resync(peer: SocketAddress?) throws(PairCommandError)
    /// Swaps the roles of a pair in lock-step.
    func failback() throws(PairCommandError)
}

/// Why the pair did not carry out a command: each maps to one error code,
/// which coloctl maps to one exit status.
enum PairCommandError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The pair's state does not take this command now (or there is no pair).
    case refused(String)
    /// The peer or a step of the command did not finish in time.
    case timedOut(String)
    /// A local daemon the command needs did not answer.
    case unavailable(String)
    /// The command failed while being carried out.
    case failed(String)

    var code: ColoErrorCode {
        switch self {
        case .refused: return .failedPrecondition
        case .timedOut: return .timeout
        case .unavailable: return .unavailable
        case .failed: return .internal
        }
    }

    var description: String {
        switch self {
        case .refused(let message), .timedOut(let message), .unavailable(let message), .failed(let message):
            return message
        }
    }

    var reply: ControlReply { .error(code, description) }
}
