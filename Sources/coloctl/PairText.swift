import ColoProtocol

/// The pair's report as lines for people.
enum PairText {
    static func describe(_ pair: ColoPairReport) -> String {
        var lines: [(String, String)] = []
        lines.append(("pair", "\(pair.pair)  role \(pair.hostRole)  state \(pair.state)  epoch \(pair.epoch)"))
        var peer = pair.peer.isEmpty ? "" : "\(pair.peer)  "
        if pair.peerConnected {
            peer += "connected, \(pair.peerState), heard \(milliseconds(pair.peerHeardMsAgo)) ago"
        } else {
            peer += "not connected"
            if pair.peerHeardMsAgo > 0 { peer += ", last heard \(milliseconds(pair.peerHeardMsAgo)) ago" }
        }
        lines.append(("peer", peer))
        if !pair.detail.isEmpty { lines.append(("detail", pair.detail)) }
        if pair.hasLastCheckpoint {
            let last = pair.lastCheckpoint
            lines.append(("last checkpoint", "#\(last.id) \(last.trigger), \(milliseconds(last.msAgo)) ago, "
                + "paused \(microseconds(last.pauseUs))"))
        } else {
            lines.append(("last checkpoint", "none yet"))
        }
        if pair.pause.samples > 0 {
            lines.append(("pause", "p50 \(microseconds(pair.pause.p50Us))  p99 \(microseconds(pair.pause.p99Us))  "
                + "max \(microseconds(pair.pause.maxUs))  (last \(pair.pause.samples))"))
        }
        lines.append(("checkpoints", String(format1(pair.checkpointsPerMinute)) + "/min"
            + counts(pair.checkpointsByTrigger, prefix: "  since start: ")))
        lines.append(("mismatches", pair.mismatchesByReason.values.reduce(0, +) == 0 ? "none"
            : counts(pair.mismatchesByReason, prefix: "by reason: ") + counts(pair.mismatchesByProtocol, prefix: "; by protocol: ")))
        if pair.hasReplicationLag {
            lines.append(("replication lag", "\(bytes(pair.replicationLag.bytes)) dirty, "
                + "\(milliseconds(pair.replicationLag.msSinceCheckpoint)) since checkpoint"))
        }
        lines.append(("failovers", "\(pair.failovers)"))
        if pair.hasOperation { lines.append(("operation", Progress.line(pair.operation))) }
        let width = lines.map(\.0.count).max() ?? 0
        return lines.map { "\($0.0.padding(to: width))  \($0.1)" }.joined(separator: "\n")
    }

    /// "periodic 12, mismatch 3": non-zero counts, largest first.
    static func counts(_ values: [String: UInt64], prefix: String) -> String {
        let nonZero = values.filter { $0.value > 0 }.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
        guard !nonZero.isEmpty else { return "" }
        return prefix + nonZero.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    }

    static func microseconds(_ value: UInt64) -> String {
        if value < 1000 { return "\(value)µs" }
        if value < 1_000_000 { return format1(Double(value) / 1000) + "ms" }
        return format1(Double(value) / 1e6) + "s"
    }

    static func milliseconds(_ value: UInt64) -> String {
        if value < 1000 { return "\(value)ms" }
        if value < 60_000 { return format1(Double(value) / 1000) + "s" }
        return "\(value / 60_000)m\(value / 1000 % 60)s"
    }

    static func bytes(_ value: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var scaled = Double(value)
        var unit = 0
        while scaled >= 1024 && unit < units.count - 1 {
            scaled /= 1024
            unit += 1
        }
        return unit == 0 ? "\(value) B" : format1(scaled) + " " + units[unit]
    }

    /// One decimal, without Foundation's formatters.
    static func format1(_ value: Double) -> String {
        guard value.isFinite else { return "-" }
        let tenths = (value * 10).rounded()
        let whole = Int64(tenths / 10)
        let fraction = Int64(abs(tenths.truncatingRemainder(dividingBy: 10)))
        return "\(whole).\(fraction)"
    }
}
