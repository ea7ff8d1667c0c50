import ColoProtocol
import ControlSocket
import DaemonRuntime

/// The daemons supervisord manages on its host, in start-up order.
let managedDaemons = ["vmmd", "checkpointd", "proxyd", "blockd"]

/// supervisord's requests.
struct SupervisorService: DaemonService {
    let environment: DaemonEnvironment
    /// How long one daemon may take to answer a status request.
    var daemonTimeout: Duration = .seconds(2)

    var state: String { "ready" }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) async -> ControlReply? {
        switch body {
        case .hostStatus:
            return ControlReply(.hostStatus(await hostStatus()))
        default:
            return nil
        }
    }

    /// Asks every managed daemon for its status, all at once, each with its
    /// own timeout: one daemon that hangs cannot delay the others' reports.
    private func hostStatus() async -> ColoHostStatus {
        let reports = await withTaskGroup(of: (Int, ColoDaemonReport).self) { group in
            for (index, daemon) in managedDaemons.enumerated() {
                group.addTask { (index, await report(on: daemon)) }
            }
            var collected: [(Int, ColoDaemonReport)] = []
            for await result in group { collected.append(result) }
            return collected.sorted { $0.0 < $1.0 }.map(\.1)
        }
        var status = ColoHostStatus()
        status.supervisor = environment.selfStatus.snapshot(state: state)
        status.daemons = reports
        return status
    }

    private func report(on daemon: String) async -> ColoDaemonReport {
        var report = ColoDaemonReport()
        report.daemon = daemon
        do {
            let client = try ControlClient(connectingTo: environment.socketPath(of: daemon))
            defer { client.close() }
            let response = try await client.call(.status(ColoStatusRequest()), timeout: daemonTimeout)
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
