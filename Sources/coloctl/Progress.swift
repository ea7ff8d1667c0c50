import ColoProtocol
import Glibc

/// Draws a migration's or resync's progress: a bar redrawn in place on a
/// terminal, a plain line every few seconds otherwise (logs, CI, pipes).
/// Progress goes to stderr, so stdout carries only the result.
enum Progress {
    /// "resync  45%  1.2 GiB / 2.0 GiB  300.0 MiB/s  ETA 0:03"
    static func line(_ operation: ColoLongOperation) -> String {
        var parts = [operation.kind]
        if operation.totalBytes > 0 {
            let percent = min(100, operation.doneBytes * 100 / operation.totalBytes)
            parts.append("\(percent)%".leftPadded(to: 4))
            parts.append("\(PairText.bytes(operation.doneBytes)) / \(PairText.bytes(operation.totalBytes))")
        } else {
            parts.append(PairText.bytes(operation.doneBytes))
        }
        parts.append("\(PairText.bytes(operation.bytesPerSecond))/s")
        if let eta = eta(operation) { parts.append("ETA \(eta)") }
        return parts.joined(separator: "  ")
    }

    /// "[##########..........]": `width` cells, empty while the total is unknown.
    static func bar(_ operation: ColoLongOperation, width: Int = 24) -> String {
        let filled = operation.totalBytes == 0 ? 0
            : Int(min(operation.doneBytes, operation.totalBytes) * UInt64(width) / operation.totalBytes)
        return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
    }

    /// Remaining bytes at the current rate, as m:ss; nil while unknown.
    static func eta(_ operation: ColoLongOperation) -> String? {
        guard operation.totalBytes > 0, operation.bytesPerSecond > 0 else { return nil }
        let remaining = operation.totalBytes > operation.doneBytes ? operation.totalBytes - operation.doneBytes : 0
        let seconds = remaining / operation.bytesPerSecond
        let secondsText = seconds % 60 < 10 ? "0\(seconds % 60)" : "\(seconds % 60)"
        return "\(seconds / 60):\(secondsText)"
    }
}

/// Polls the pair's report until it reaches lock-step, drawing the
/// progress of the migration or resync on the way.
struct ProgressWatcher {
    enum Goal {
        /// Lock-step is the only success; going back to running alone
        /// (or waiting) after the transfer started is a failed resync.
        case resync
        /// Wait through the peer's arrival and the initial sync.
        case lockstep
        /// On the primary that led a failback: lock-step again as the
        /// secondary; lock-step as the primary means it was declined.
        case failback
    }

    let connection: ConnectionOptions
    let goal: Goal
    let limit: Duration
    /// Draw in place (a terminal) or print periodic lines.
    let interactive = isatty(STDERR_FILENO) == 1
    /// Drawing is off with --json (stdout then holds only the final JSON).
    let quiet: Bool

    func run() throws(CommandFailure) -> ColoPairReport {
        let start = ContinuousClock.now
        var lastLine = start - .seconds(60)
        var drewInPlace = false
        var transferSeen = false
        defer { if drewInPlace { printError("") } }
        while true {
            guard case .pairReport(let report) = try callSupervisor(.pairStatus(ColoPairStatusRequest()), connection) else {
                throw CommandFailure(status: ColoctlExit.failed, code: "failed",
                                     message: "supervisord answered a pair status request with another message")
            }
            switch report.state {
            case "lockstep" where goal == .failback && report.hostRole == "primary":
                throw CommandFailure(status: ColoctlExit.failed, code: "failback_declined",
                                     message: report.detail.isEmpty ? "the failback was declined" : report.detail)
            case "lockstep":
                return report
            case "alone" where goal == .failback:
                throw CommandFailure(status: ColoctlExit.failed, code: "failback_failed",
                                     message: "the secondary was lost during the failback; this host runs alone")
            case "fenced":
                throw CommandFailure(status: ColoctlExit.failed, code: "fenced",
                                     message: "this host is fenced: \(report.detail)")
            case "syncing", "resyncing":
                transferSeen = true
            case "alone" where goal == .resync && transferSeen, "waiting" where goal == .resync && transferSeen:
                throw CommandFailure(status: ColoctlExit.failed, code: "resync_failed",
                                     message: "the resync failed; the pair is \(report.state) again"
                                         + (report.detail.isEmpty ? "" : ": \(report.detail)"))
            default:
                break
            }
            let now = ContinuousClock.now
            if now - start > limit {
                throw CommandFailure(status: ColoctlExit.timedOut, code: "timeout",
                                     message: "the pair did not reach lock-step within \(limit) (state \(report.state))")
            }
            if !quiet {
                let text = report.hasOperation ? Progress.line(report.operation)
                    : "\(report.state): waiting for the transfer to start"
                if interactive {
                    let bar = report.hasOperation ? Progress.bar(report.operation) + " " : ""
                    writeError("\r\u{1B}[K" + bar + text)
                    drewInPlace = true
                } else if now - lastLine >= .seconds(2) {
                    printError(text)
                    lastLine = now
                }
            }
            usleep(interactive ? 250_000 : 500_000)
        }
    }
}

func writeError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(STDERR_FILENO, &bytes, bytes.count)
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
