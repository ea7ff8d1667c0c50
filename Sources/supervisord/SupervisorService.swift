import Durations
import ColoProtocol
import ControlSocket
import DaemonRuntime
import Dispatch
import Logging
import PairConfiguration
import PairMetrics
import Synchronization

/// The daemons supervisord manages on its host, in start-up order.
let managedDaemons = ["vmmd", "checkpointd", "proxyd", "blockd"]

/// supervisord's requests: the host's status, and the operator's commands
/// to the pair (through `PairControl`).
struct SupervisorService: DaemonService {
    let environment: DaemonEnvironment
    /// Absent when supervisord runs without a pair configuration.
    let pair: (any PairControl)?
    /// Serves the pair's metrics to Prometheus, when configured.
    let metricsEndpoint: MetricsEndpoint?
    /// How long one daemon may take to answer a status request.
    var daemonTimeout: Duration = .seconds(2)

    /// Opens the metrics endpoint's socket now (before the sandbox); it
    /// serves once the daemon does (`serving`).
    init(environment: DaemonEnvironment, pair: (any PairControl)? = nil,
         metricsListen: SocketAddress? = nil) throws(MetricsEndpointError) {
        self.environment = environment
        self.pair = pair
        if let pair, let metricsListen {
            let metrics = pair.metrics
            metricsEndpoint = try MetricsEndpoint(listeningOn: metricsListen) { metrics.exposition() }
        } else {
            metricsEndpoint = nil
        }
    }

    var state: String { pair == nil ? "ready" : "supervising" }

    func serving() {
        guard let metricsEndpoint else { return }
        metricsEndpoint.start()
        environment.logger.info("metrics served on http://\(metricsEndpoint.address)/metrics", metadata: [
            "event": "metrics_listening", "address": "\(metricsEndpoint.address)",
        ])
    }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        switch body {
        case .hostStatus:
            return ControlReply(.hostStatus(hostStatus()))
        case .pairStatus:
            return withPair { pair in ControlReply(.pairReport(report(of: pair))) }
        case .pairCheckpoint:
            return withPair { pair throws(PairCommandError) in
                operatorCommand("checkpoint")
                var reply = ColoPairCheckpointReply()
                reply.checkpoint = try pair.checkpoint()
                return ControlReply(.pairCheckpoint(reply))
            }
        case .pairFailover:
            return withPair { pair throws(PairCommandError) in
                operatorCommand("failover")
                try pair.failover()
                return accepted(pair)
            }
        case .pairResync(let request):
            var peer: SocketAddress?
            if !request.peer.isEmpty {
                guard let address = ValueParser.socketAddress(request.peer) else {
                    return .error(.invalidArgument, "resync peer '\(request.peer)' is not address:port")
                }
                peer = address
            }
            return withPair { pair throws(PairCommandError) in
                operatorCommand("resync", peer.map { ["peer": "\($0)"] } ?? [:])
                try pair.resync(peer: peer)
                return accepted(pair)
            }
        case .pairFailback:
            return withPair { pair throws(PairCommandError) in
                operatorCommand("failback")
                try pair.failback()
                return accepted(pair)
            }
        default:
            return nil
        }
    }

    /// Runs a pair request, or answers that there is no pair here.
    private func withPair(_ body: (any PairControl) throws(PairCommandError) -> ControlReply) -> ControlReply {
        guard let pair else {
            return PairCommandError.refused("supervisord runs without a pair configuration (no --config)").reply
        }
        do {
            return try body(pair)
        } catch {
            environment.logger.warning("pair command refused: \(error)", metadata: [
                "event": "operator_command_refused", "error_code": "\(error.code.name)",
            ])
            return error.reply
        }
    }

    private func operatorCommand(_ command: String, _ extra: [String: String] = [:]) {
        var metadata: [String: Logger.MetadataValue] = ["event": "operator_command", "command": "\(command)"]
        for (key, value) in extra { metadata[key] = "\(value)" }
        environment.logger.notice("operator: \(command)", metadata: metadata)
    }

    private func accepted(_ pair: any PairControl) -> ControlReply {
        var reply = ColoPairCommandAccepted()
        reply.pair = report(of: pair)
        return ControlReply(.pairCommand(reply))
    }

    /// The pair's state with its metrics.
    private func report(of pair: any PairControl) -> ColoPairReport {
        var report = pair.report()
        pair.metrics.fill(&report)
        return report
    }

    /// Asks every managed daemon for its status, all at once, each with its
    /// own timeout: one daemon that hangs cannot delay the others' reports.
    private func hostStatus() -> ColoHostStatus {
        let reports = Mutex([ColoDaemonReport?](repeating: nil, count: managedDaemons.count))
        let done = DispatchSemaphore(value: 0)
        for (index, daemon) in managedDaemons.enumerated() {
            spawnThread(name: "status-\(daemon)") { [self] in
                let report = report(on: daemon)
                reports.withLock { $0[index] = report }
                done.signal()
            }
        }
        for _ in managedDaemons { done.wait() }
        var status = ColoHostStatus()
        status.supervisor = environment.selfStatus.snapshot(state: state)
        status.daemons = reports.withLock { $0.compactMap { $0 } }
        if let pair { status.pair = report(of: pair) }
        return status
    }

    private func report(on daemon: String) -> ColoDaemonReport {
        var report = ColoDaemonReport()
        report.daemon = daemon
        do {
            let client = try ControlClient(connectingTo: environment.socketPath(of: daemon))
            defer { client.close() }
            let response = try client.call(.status(ColoStatusRequest()), timeout: daemonTimeout)
            guard case .status(let status) = response.message.body else {
                report.unreachable = ColoError(.internal, "\(daemon) answered a status request with another message")
                return report
            }
            report.status = status
        } catch {
            environment.logger.warning("\(daemon) did not answer", metadata: [
                "event": "daemon_unreachable", "target": "\(daemon)", "error": "\(error)",
            ])
            report.unreachable = ColoError(.unavailable, "\(daemon): \(error)")
        }
        return report
    }
}
