import ColoProtocol
import PairMetrics
import XCTest

final class PairMetricsTests: XCTestCase {
    let start = ContinuousClock.now

    func testPausePercentilesAndTriggersReachTheReport() {
        let metrics = PairMetrics(now: start)
        // 1..100 ms: p50 is 50 ms, p99 is 99 ms.
        for index in 1...100 {
            let trigger: CheckpointTrigger = index % 10 == 0 ? .mismatch : .periodic
            metrics.recordCheckpoint(id: UInt64(index), trigger: trigger, pause: .milliseconds(index),
                                     at: start + .milliseconds(100 * index))
        }
        var report = ColoPairReport()
        metrics.fill(&report, at: start + .seconds(11))
        XCTAssertEqual(report.pause.p50Us, 50_000)
        XCTAssertEqual(report.pause.p99Us, 99_000)
        XCTAssertEqual(report.pause.maxUs, 100_000)
        XCTAssertEqual(report.pause.samples, 100)
        XCTAssertEqual(report.checkpointsByTrigger, ["periodic": 90, "mismatch": 10])
        XCTAssertEqual(report.lastCheckpoint.id, 100)
        XCTAssertEqual(report.lastCheckpoint.trigger, "mismatch")
        XCTAssertEqual(report.lastCheckpoint.pauseUs, 100_000)
        XCTAssertEqual(report.lastCheckpoint.msAgo, 1000)
        XCTAssertEqual(report.checkpointsPerMinute, 100)
        XCTAssertFalse(report.hasReplicationLag, "no lag is reported while not replicating")
        XCTAssertFalse(report.hasOperation)
    }

    /// Percentiles follow recent behaviour: old pauses leave the window.
    func testThePauseWindowForgetsOldCheckpoints() {
        let metrics = PairMetrics(now: start)
        for index in 0..<PairMetrics.pauseWindowSize {
            metrics.recordCheckpoint(id: UInt64(index), trigger: .periodic, pause: .seconds(2), at: start)
        }
        for index in 0..<PairMetrics.pauseWindowSize {
            metrics.recordCheckpoint(id: UInt64(1000 + index), trigger: .periodic, pause: .microseconds(300), at: start)
        }
        var report = ColoPairReport()
        metrics.fill(&report, at: start)
        XCTAssertEqual(report.pause.p99Us, 300)
        XCTAssertEqual(report.pause.samples, UInt32(PairMetrics.pauseWindowSize))
    }

    /// Checkpoints per minute is a sliding window: a burst a minute ago no
    /// longer counts.
    func testCheckpointsPerMinuteSlides() {
        let metrics = PairMetrics(now: start)
        for second in 0..<30 {
            metrics.recordCheckpoint(id: UInt64(second), trigger: .periodic, pause: .milliseconds(1),
                                     at: start + .seconds(second))
        }
        func perMinute(at seconds: Int) -> Double {
            var report = ColoPairReport()
            metrics.fill(&report, at: start + .seconds(seconds))
            return report.checkpointsPerMinute
        }
        XCTAssertEqual(perMinute(at: 30), 30)
        XCTAssertEqual(perMinute(at: 59), 30)
        XCTAssertEqual(perMinute(at: 75), 14, "seconds 16..29 are still within the minute")
        XCTAssertEqual(perMinute(at: 200), 0)
    }

    func testProxydCountersAreCountedAsIncreasesEvenAcrossARestart() {
        let metrics = PairMetrics(now: start)
        metrics.recordProxyCounters(proxyCounters(tcp: (3, 1), udp: (0, 2)))
        metrics.recordProxyCounters(proxyCounters(tcp: (5, 1), udp: (0, 2)))
        // proxyd restarted: its totals start again from zero.
        metrics.recordProxyCounters(proxyCounters(tcp: (1, 0), udp: (0, 0)))
        var report = ColoPairReport()
        metrics.fill(&report, at: start)
        XCTAssertEqual(report.mismatchesByReason, ["differ": 6, "timeout": 3])
        XCTAssertEqual(report.mismatchesByProtocol, ["tcp": 7, "udp": 2])
        let text = metrics.exposition(at: start)
        XCTAssertTrue(text.contains(#"colo_mismatches_total{protocol="tcp",reason="differ"} 6"#), text)
        XCTAssertTrue(text.contains(#"colo_mismatches_total{protocol="udp",reason="timeout"} 2"#), text)
        XCTAssertTrue(text.contains(#"colo_mismatches_total{protocol="icmp",reason="differ"} 0"#), text)
    }

    func testReplicationLagCountsFromTheLastCheckpointWhileReplicating() {
        let metrics = PairMetrics(now: start)
        metrics.setReplicating(true, at: start)
        metrics.recordReplicationLag(bytes: 4096)
        var report = ColoPairReport()
        metrics.fill(&report, at: start + .milliseconds(700))
        XCTAssertEqual(report.replicationLag.bytes, 4096)
        XCTAssertEqual(report.replicationLag.msSinceCheckpoint, 700)
        metrics.recordCheckpoint(id: 1, trigger: .periodic, pause: .milliseconds(2), at: start + .seconds(1))
        metrics.fill(&report, at: start + .milliseconds(1250))
        XCTAssertEqual(report.replicationLag.msSinceCheckpoint, 250)
        metrics.setReplicating(false)
        report = ColoPairReport()
        metrics.fill(&report, at: start + .seconds(2))
        XCTAssertFalse(report.hasReplicationLag)
        XCTAssertTrue(metrics.exposition(at: start + .seconds(2)).contains("\ncolo_replication_lag_seconds 0"))
    }

    func testOperationProgressAndRate() {
        let metrics = PairMetrics(now: start)
        metrics.beginOperation(.resync, totalBytes: 1 << 30, at: start)
        metrics.updateOperation(doneBytes: 100 << 20, at: start + .seconds(1))
        metrics.updateOperation(doneBytes: 300 << 20, at: start + .seconds(2))
        var report = ColoPairReport()
        metrics.fill(&report, at: start + .seconds(2))
        XCTAssertEqual(report.operation.kind, "resync")
        XCTAssertEqual(report.operation.doneBytes, 300 << 20)
        XCTAssertEqual(report.operation.totalBytes, 1 << 30)
        XCTAssertEqual(report.operation.bytesPerSecond, 150 << 20)
        XCTAssertEqual(report.operation.elapsedMs, 2000)
        // Only the last few seconds count towards the rate.
        metrics.updateOperation(doneBytes: 310 << 20, at: start + .seconds(30))
        metrics.updateOperation(doneBytes: 320 << 20, at: start + .seconds(31))
        metrics.fill(&report, at: start + .seconds(31))
        XCTAssertLessThan(report.operation.bytesPerSecond, 15 << 20)
        let text = metrics.exposition(at: start + .seconds(31))
        XCTAssertTrue(text.contains(#"colo_operation_active{kind="resync"} 1"#), text)
        XCTAssertTrue(text.contains(#"colo_operation_active{kind="migration"} 0"#), text)
        metrics.endOperation()
        report = ColoPairReport()
        metrics.fill(&report)
        XCTAssertFalse(report.hasOperation)
    }

    /// The exposition parses as the Prometheus text format, has the pause
    /// histogram's buckets from 100 µs to 10 s, and counts what was recorded.
    func testExpositionIsValidPrometheusText() throws {
        let metrics = PairMetrics(now: start)
        metrics.recordCheckpoint(id: 1, trigger: .operator, pause: .microseconds(150), at: start)
        metrics.recordCheckpoint(id: 2, trigger: .queueFull, pause: .milliseconds(40), at: start)
        metrics.recordFailover()
        let samples = try PrometheusText.parse(metrics.exposition(at: start + .seconds(1)))
        XCTAssertEqual(samples[#"colo_checkpoints_total{trigger="operator"}"#], 1)
        XCTAssertEqual(samples[#"colo_checkpoints_total{trigger="queue_full"}"#], 1)
        XCTAssertEqual(samples[#"colo_checkpoints_total{trigger="periodic"}"#], 0)
        XCTAssertEqual(samples["colo_failovers_total"], 1)
        XCTAssertEqual(samples["colo_checkpoint_pause_seconds_count"], 2)
        XCTAssertEqual(samples[#"colo_checkpoint_pause_seconds_bucket{le="0.0001"}"#], 0)
        XCTAssertEqual(samples[#"colo_checkpoint_pause_seconds_bucket{le="0.00025"}"#], 1)
        XCTAssertEqual(samples[#"colo_checkpoint_pause_seconds_bucket{le="0.05"}"#], 2)
        XCTAssertEqual(samples[#"colo_checkpoint_pause_seconds_bucket{le="10.0"}"#], 2)
        XCTAssertEqual(samples[#"colo_checkpoint_pause_seconds_bucket{le="+Inf"}"#], 2)
        XCTAssertEqual(samples["colo_checkpoints_per_minute"], 2)
        XCTAssertEqual(samples[#"colo_checkpoint_pause_recent_seconds{quantile="0.99"}"#], 0.04)
    }

    private func proxyCounters(tcp: (UInt64, UInt64), udp: (UInt64, UInt64)) -> ColoProxyCounters {
        var counters = ColoProxyCounters()
        for (proto, (mismatched, expired)) in [(ColoProxyProtocol.tcp, tcp), (.udp, udp)] {
            var entry = ColoProxyProtocolCounters()
            entry.protocol = proto
            entry.mismatched = mismatched
            entry.expired = expired
            entry.matched = 1000
            counters.protocols.append(entry)
        }
        return counters
    }
}
