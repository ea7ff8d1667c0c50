import ArgumentParser
import ColoProtocol
import Glibc

/// `coloctl status`: the pair (role, peer, state, checkpoints, mismatches,
/// lag) and every local daemon's state, version and pid.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the pair (role, peer, state, checkpoints, mismatches, lag) and every local daemon.",
        discussion: "Exits 0 when all answer, 3 when a daemon is down, 2 when supervisord cannot be reached.")

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runReporting(json: connection.json) { () throws(CommandFailure) in
            guard case .hostStatus(let status) = try callSupervisor(.hostStatus(ColoHostStatusRequest()), connection)
            else {
                throw CommandFailure(status: ColoctlExit.failed, code: "failed",
                                     message: "supervisord answered a status request with another message")
            }
            if connection.json {
                do { try printJSON(status) } catch {
                    throw CommandFailure(status: ColoctlExit.failed, code: "failed", message: "\(error)")
                }
            } else {
                if status.hasPair { print(PairText.describe(status.pair) + "\n") }
                print(Self.table(status))
            }
            let down = status.daemons.filter { $0.status.daemon.isEmpty }
            if !down.isEmpty {
                throw CommandFailure(status: ColoctlExit.daemonDown, code: "daemon_down",
                                     message: "down: " + down.map(\.daemon).joined(separator: ", "),
                                     shownInOutput: true)
            }
        }
    }

    static func table(_ status: ColoHostStatus) -> String {
        var rows = [["DAEMON", "STATE", "PID", "VERSION", "UPTIME", "SANDBOX", "SOCKET"]]
        func row(_ daemon: String, _ status: ColoDaemonStatus) -> [String] {
            let sandbox = status.sandbox.seccompFilterInstalled
                ? "seccomp(\(status.sandbox.allowedSyscallCount))" : "off"
            return [daemon, status.state, String(status.pid), status.version,
                    formatUptime(status.uptimeMs), sandbox, status.socketOrigin]
        }
        rows.append(row("supervisord", status.supervisor))
        for report in status.daemons {
            switch report.outcome {
            case .status(let daemonStatus): rows.append(row(report.daemon, daemonStatus))
            case .unreachable(let error): rows.append([report.daemon, "DOWN", "-", "-", "-", "-", error.message])
            case .none: rows.append([report.daemon, "UNKNOWN", "-", "-", "-", "-", "-"])
            }
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            zip(row, widths).enumerated().map { index, pair in
                index == row.count - 1 ? pair.0 : pair.0.padding(to: pair.1)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func formatUptime(_ milliseconds: UInt64) -> String {
        let seconds = milliseconds / 1000
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return "\(seconds / 60)m\(seconds % 60)s" }
        return "\(seconds / 3600)h\(seconds / 60 % 60)m"
    }
}

func printError(_ message: String) {
    var bytes = Array((message + "\n").utf8)
    _ = write(STDERR_FILENO, &bytes, bytes.count)
}

func environmentValue(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

extension String {
    func padding(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
