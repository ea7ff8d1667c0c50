import Durations
import ColoProtocol
import Prometheus
import Synchronization

/// What asked for a checkpoint (DESIGN.md section 4, step 1).
public enum CheckpointTrigger: String, Sendable, CaseIterable {
    /// The maximum checkpoint interval passed.
    case periodic
    /// proxyd saw the two guests' outputs differ.
    case mismatch
    /// A primary packet waited longer than the compare timeout.
    case timeout
    /// proxyd's held queue reached its limit.
    case queueFull = "queue_full"
    /// `coloctl checkpoint`.
    case `operator`
}

extension CheckpointTrigger {
    /// The trigger of a checkpoint proxyd asked for.
    public init(_ reason: ColoProxyCheckpointReason) {
        switch reason {
        case .expired: self = .timeout
        case .queueFull: self = .queueFull
        default: self = .mismatch
        }
    }
}

/// The long operations whose progress `coloctl` draws.
public enum LongOperationKind: String, Sendable, CaseIterable {
    /// The first sync: live migration of all RAM into the secondary.
    case migration
    /// Bringing a new partner up to date after a failover.
    case resync
}

/// The pair's metrics as supervisord records them: the figures an operator
/// (`coloctl status`) and a monitoring system (Prometheus, through
/// `MetricsEndpoint`) watch. Thread-safe; every call is short and takes one
/// lock, so the checkpoint path can record without measurable cost.
///
/// Two views of the same events: Prometheus counters and a histogram since
/// start (monitoring computes its own rates and quantiles from them), and
/// recent-window figures (pause p50/p99 over the last `pauseWindowSize`
/// checkpoints, checkpoints over the last minute) for people.
public final class PairMetrics: Sendable {
    /// Pause histogram buckets, 100 µs to 10 s: a checkpoint of an idle guest
    /// pauses for well under a millisecond, a large dirty set for seconds.
    public static let pauseBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .microseconds(2500), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
    ]
    /// How many recent pauses the report's percentiles are taken over.
    public static let pauseWindowSize = 256

    /// proxyd's comparison outcomes that count as mismatches, by reason.
    public enum MismatchReason: String, Sendable, CaseIterable {
        /// The two guests' packets differed.
        case differ
        /// A primary packet found no secondary twin within the compare timeout.
        case timeout
    }

    private struct Checkpoint {
        var id: UInt64
        var trigger: CheckpointTrigger
        var pause: Duration
        var at: ContinuousClock.Instant
    }

    private struct Operation {
        var kind: LongOperationKind
        var done: UInt64 = 0
        var total: UInt64
        var started: ContinuousClock.Instant
        var rate = RateWindow()
    }

    private struct MismatchKey: Hashable {
        var proto: String
        var reason: MismatchReason
    }

    private struct State {
        var pauses = PauseWindow(capacity: PairMetrics.pauseWindowSize)
        var perMinute = MinuteCounter()
        var last: Checkpoint?
        var byTrigger: [CheckpointTrigger: UInt64] = [:]
        /// Mismatches counted since supervisord started.
        var mismatches: [MismatchKey: UInt64] = [:]
        /// proxyd's cumulative totals as last seen, to count the increase.
        var proxydTotals: [MismatchKey: UInt64] = [:]
        var replicating = false
        var replicationStarted: ContinuousClock.Instant?
        var lagBytes: UInt64 = 0
        var failovers: UInt64 = 0
        var operation: Operation?
    }

    private let origin: ContinuousClock.Instant
    private let state: Mutex<State>
    private let registry: PrometheusCollectorRegistry
    private let pauseHistogram: DurationHistogram
    private let checkpoints: [CheckpointTrigger: Counter]
    private let recentPause: [(quantile: Double, gauge: Gauge)]
    private let checkpointsPerMinute: Gauge
    private let lagBytes: Gauge
    private let lagSeconds: Gauge
    private let failovers: Counter
    private let operationGauges: [LongOperationKind: (active: Gauge, done: Gauge, total: Gauge, rate: Gauge)]

    public init(now: ContinuousClock.Instant = .now) {
        origin = now
        state = Mutex(State())
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        pauseHistogram = registry.makeDurationHistogram(
            descriptor: Self.name("checkpoint_pause", unit: "seconds",
                                  "Primary VM pause per checkpoint, VM stopped to VM running again."),
            labels: [], buckets: Self.pauseBuckets)
        var checkpoints: [CheckpointTrigger: Counter] = [:]
        for trigger in CheckpointTrigger.allCases {
            checkpoints[trigger] = registry.makeCounter(
                descriptor: Self.name("checkpoints", unit: "total", "Completed checkpoints, by what asked for them."),
                labels: [("trigger", trigger.rawValue)])
        }
        self.checkpoints = checkpoints
        recentPause = [0.5, 0.99].map { quantile in
            (quantile, registry.makeGauge(
                descriptor: Self.name("checkpoint_pause_recent", unit: "seconds",
                                      "Pause quantiles over the last \(Self.pauseWindowSize) checkpoints."),
                labels: [("quantile", "\(quantile)")]))
        }
        checkpointsPerMinute = registry.makeGauge(
            descriptor: Self.name("checkpoints_per_minute", unit: "", "Checkpoints completed in the last 60 seconds."),
            labels: [])
        lagBytes = registry.makeGauge(
            descriptor: Self.name("replication_lag", unit: "bytes",
                                  "Guest RAM dirtied that the secondary has not received yet (0 when not replicating)."),
            labels: [])
        lagSeconds = registry.makeGauge(
            descriptor: Self.name("replication_lag", unit: "seconds",
                                  "Time since the last completed checkpoint (0 when not replicating)."),
            labels: [])
        failovers = registry.makeCounter(
            descriptor: Self.name("failovers", unit: "total", "Failovers this host performed (took over or went on alone)."),
            labels: [])
        var operationGauges: [LongOperationKind: (Gauge, Gauge, Gauge, Gauge)] = [:]
        for kind in LongOperationKind.allCases {
            let labels = [("kind", kind.rawValue)]
            operationGauges[kind] = (
                registry.makeGauge(descriptor: Self.name("operation_active", unit: "",
                                                         "1 while a migration or resync is under way."), labels: labels),
                registry.makeGauge(descriptor: Self.name("operation_done", unit: "bytes",
                                                         "Bytes transferred by the current operation."), labels: labels),
                registry.makeGauge(descriptor: Self.name("operation_total", unit: "bytes",
                                                         "Bytes the current operation must transfer (0: not known yet)."),
                                   labels: labels),
                registry.makeGauge(descriptor: Self.name("operation_rate", unit: "bytes_per_second",
                                                         "Transfer rate of the current operation over the last seconds."),
                                   labels: labels))
        }
        self.operationGauges = operationGauges.mapValues { (active: $0.0, done: $0.1, total: $0.2, rate: $0.3) }
        // Every mismatch series exists from the start, so a scrape shows zeros
        // rather than an absent series that alerting rules cannot tell apart.
        for proto in Self.protocolNames.values.sorted() {
            for reason in MismatchReason.allCases {
                _ = mismatchCounter(MismatchKey(proto: proto, reason: reason))
            }
        }
    }

    private static func name(_ metric: String, unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "colo", metricName: metric, unitName: unit, helpText: help)
    }

    private func mismatchCounter(_ key: MismatchKey) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("mismatches", unit: "total",
                                  "proxyd comparison mismatches that forced a checkpoint, by protocol and reason."),
            labels: [("protocol", key.proto), ("reason", key.reason.rawValue)])
    }

    // MARK: - Recording

    /// A checkpoint completed; `pause` is the primary's VM pause.
    public func recordCheckpoint(id: UInt64, trigger: CheckpointTrigger, pause: Duration,
                                 at instant: ContinuousClock.Instant = .now) {
        state.withLock { state in
            state.pauses.add(UInt64(clamping: max(0, pause.microseconds)))
            state.perMinute.add(atSecond: second(of: instant))
            state.last = Checkpoint(id: id, trigger: trigger, pause: pause, at: instant)
            state.byTrigger[trigger, default: 0] += 1
        }
        pauseHistogram.record(pause)
        checkpoints[trigger]?.increment()
    }

    /// proxyd's counters (cumulative since proxyd started): the increase since
    /// the last call is counted; a total that went down means proxyd
    /// restarted, and its new total is all new.
    public func recordProxyCounters(_ counters: ColoProxyCounters) {
        var increases: [(MismatchKey, UInt64)] = []
        state.withLock { state in
            for entry in counters.protocols {
                let proto = Self.protocolNames[entry.protocol] ?? "other"
                for (reason, total) in [(MismatchReason.differ, entry.mismatched), (.timeout, entry.expired)] {
                    let key = MismatchKey(proto: proto, reason: reason)
                    let previous = state.proxydTotals[key] ?? 0
                    let increase = total >= previous ? total - previous : total
                    state.proxydTotals[key] = total
                    if increase > 0 {
                        state.mismatches[key, default: 0] += increase
                        increases.append((key, increase))
                    }
                }
            }
        }
        for (key, increase) in increases {
            mismatchCounter(key).increment(by: Int64(clamping: increase))
        }
    }

    /// Replication started (lock-step) or stopped (failover, peer lost):
    /// lag is only meaningful while replicating.
    public func setReplicating(_ replicating: Bool, at instant: ContinuousClock.Instant = .now) {
        state.withLock { state in
            state.replicating = replicating
            state.replicationStarted = replicating ? instant : nil
            if !replicating { state.lagBytes = 0 }
        }
    }

    /// Guest RAM dirtied and not yet sent to the secondary (checkpointd's
    /// dirty pages left, in bytes).
    public func recordReplicationLag(bytes: UInt64) {
        state.withLock { $0.lagBytes = bytes }
    }

    public func recordFailover() {
        state.withLock { $0.failovers += 1 }
        failovers.increment()
    }

    /// A migration or resync starts; `totalBytes` 0 when not known yet.
    public func beginOperation(_ kind: LongOperationKind, totalBytes: UInt64,
                               at instant: ContinuousClock.Instant = .now) {
        state.withLock { state in
            var operation = Operation(kind: kind, total: totalBytes, started: instant)
            operation.rate.add(bytes: 0, at: instant)
            state.operation = operation
        }
    }

    /// The current operation's progress; ignored when none is under way.
    public func updateOperation(doneBytes: UInt64, totalBytes: UInt64? = nil,
                                at instant: ContinuousClock.Instant = .now) {
        state.withLock { state in
            guard var operation = state.operation else { return }
            operation.done = doneBytes
            if let totalBytes { operation.total = totalBytes }
            operation.rate.add(bytes: doneBytes, at: instant)
            state.operation = operation
        }
    }

    /// The current operation ended, done or failed.
    public func endOperation() {
        state.withLock { $0.operation = nil }
    }

    // MARK: - Reading

    /// Fills the metrics fields of a pair report (`coloctl status`).
    public func fill(_ report: inout ColoPairReport, at instant: ContinuousClock.Instant = .now) {
        state.withLock { state in
            if let last = state.last {
                report.lastCheckpoint = summary(of: last, at: instant)
            }
            var pause = ColoPauseSummary()
            pause.samples = UInt32(state.pauses.count)
            pause.p50Us = state.pauses.percentile(0.5) ?? 0
            pause.p99Us = state.pauses.percentile(0.99) ?? 0
            pause.maxUs = state.pauses.maximum ?? 0
            report.pause = pause
            report.checkpointsPerMinute = Double(state.perMinute.total(atSecond: second(of: instant)))
            report.checkpointsByTrigger = Dictionary(uniqueKeysWithValues: state.byTrigger.map { ($0.key.rawValue, $0.value) })
            report.mismatchesByReason = state.mismatches.reduce(into: [:]) { $0[$1.key.reason.rawValue, default: 0] += $1.value }
            report.mismatchesByProtocol = state.mismatches.reduce(into: [:]) { $0[$1.key.proto, default: 0] += $1.value }
            if state.replicating {
                var lag = ColoReplicationLag()
                lag.bytes = state.lagBytes
                if let since = lagStart(state) { lag.msSinceCheckpoint = UInt64(clamping: max(0, (instant - since).milliseconds)) }
                report.replicationLag = lag
            }
            report.failovers = state.failovers
            if let operation = state.operation {
                var progress = ColoLongOperation()
                progress.kind = operation.kind.rawValue
                progress.doneBytes = operation.done
                progress.totalBytes = operation.total
                progress.bytesPerSecond = operation.rate.bytesPerSecond
                progress.elapsedMs = UInt64(clamping: max(0, (instant - operation.started).milliseconds))
                report.operation = progress
            }
        }
    }

    /// The last checkpoint, for the answer to an operator's checkpoint request.
    public func lastCheckpoint(at instant: ContinuousClock.Instant = .now) -> ColoCheckpointSummary? {
        state.withLock { state in state.last.map { summary(of: $0, at: instant) } }
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    public func exposition(at instant: ContinuousClock.Instant = .now) -> String {
        state.withLock { state in
            for (quantile, gauge) in recentPause {
                gauge.set(Double(state.pauses.percentile(quantile) ?? 0) / 1e6)
            }
            checkpointsPerMinute.set(Double(state.perMinute.total(atSecond: second(of: instant))))
            lagBytes.set(Double(state.lagBytes))
            lagSeconds.set(state.replicating ? lagStart(state).map { (instant - $0).seconds } ?? 0 : 0)
            for (kind, gauges) in operationGauges {
                let operation = state.operation?.kind == kind ? state.operation : nil
                gauges.active.set(to: operation == nil ? 0.0 : 1.0)
                gauges.done.set(Double(operation?.done ?? 0))
                gauges.total.set(Double(operation?.total ?? 0))
                gauges.rate.set(Double(operation?.rate.bytesPerSecond ?? 0))
            }
            return registry.emitToString()
        }
    }

    /// Lag counts from the last checkpoint, or from the start of lock-step
    /// when none has completed since.
    private func lagStart(_ state: State) -> ContinuousClock.Instant? {
        guard let started = state.replicationStarted else { return nil }
        guard let last = state.last?.at, last > started else { return started }
        return last
    }

    private func summary(of checkpoint: Checkpoint, at instant: ContinuousClock.Instant) -> ColoCheckpointSummary {
        var summary = ColoCheckpointSummary()
        summary.id = checkpoint.id
        summary.trigger = checkpoint.trigger.rawValue
        summary.pauseUs = UInt64(clamping: max(0, checkpoint.pause.microseconds))
        summary.msAgo = UInt64(clamping: max(0, (instant - checkpoint.at).milliseconds))
        return summary
    }

    private func second(of instant: ContinuousClock.Instant) -> Int64 {
        let (seconds, attoseconds) = (instant - origin).components
        return attoseconds < 0 ? seconds - 1 : seconds
    }

    private static let protocolNames: [ColoProxyProtocol: String] = [
        .tcp: "tcp", .udp: "udp", .icmp: "icmp", .arp: "arp", .other: "other",
    ]
}
