import ColoProtocol
import ControlSocket
import DaemonRuntime
import Dispatch
import Synchronization

/// The daemons supervisord manages on its host, in start-up order.
let managedDaemons = ["vmmd", "checkpointd", "proxyd", "blockd"]

/// supervisord's requests.
struct SupervisorService: DaemonService {
    let environment: DaemonEnvironment
    /// This host's side of the pair, when supervisord runs with a configuration.
    let pair: HostPair?
    /// How long one daemon may take to answer a status request.
    var daemonTimeout: Duration = .seconds(2)

    var state: String { "ready" }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        switch body {
        case .hostStatus:
            return ControlReply(.hostStatus(hostStatus()))
        default:
            return nil
        }
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
        if let pair { status.pair = pair.supervisor.report() }
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
