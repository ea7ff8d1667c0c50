/// The last `capacity` checkpoint pauses, for percentiles over recent
/// behaviour: a histogram since start hides a pair that got slow an hour ago.
struct PauseWindow: Sendable {
    let capacity: Int
    private var samples: [UInt64] = []
    private var next = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        samples.reserveCapacity(capacity)
    }

    mutating func add(_ microseconds: UInt64) {
        if samples.count < capacity {
            samples.append(microseconds)
        } else {
            samples[next] = microseconds
        }
        next = (next + 1) % capacity
    }

    var count: Int { samples.count }

    /// The nearest-rank percentile (`fraction` in 0...1); nil when empty.
    func percentile(_ fraction: Double) -> UInt64? {
        guard !samples.isEmpty else { return nil }
        let sorted = samples.sorted()
        let rank = Int((fraction * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }

    var maximum: UInt64? { samples.max() }
}

/// Events counted per second over the last minute: fixed memory whatever the
/// rate (a checkpoint every 10 ms is 6000 a minute).
struct MinuteCounter: Sendable {
    private var seconds = [Int64](repeating: -1, count: 60)
    private var counts = [UInt64](repeating: 0, count: 60)

    mutating func add(atSecond second: Int64) {
        let slot = Int(second % 60)
        if seconds[slot] != second {
            seconds[slot] = second
            counts[slot] = 0
        }
        counts[slot] += 1
    }

    /// Events in the 60 seconds ending with `second`.
    func total(atSecond second: Int64) -> UInt64 {
        var sum: UInt64 = 0
        for slot in 0..<60 where seconds[slot] > second - 60 && seconds[slot] <= second {
            sum += counts[slot]
        }
        return sum
    }
}

/// Progress samples of a long operation over the last few seconds, so the
/// rate follows the transfer as it is now, not as it was at the start.
struct RateWindow: Sendable {
    static let span: Duration = .seconds(5)
    private var samples: [(at: ContinuousClock.Instant, bytes: UInt64)] = []

    mutating func add(bytes: UInt64, at instant: ContinuousClock.Instant) {
        samples.append((instant, bytes))
        // Keep one sample older than the span, as the rate's starting point.
        while samples.count > 2, instant - samples[1].at > Self.span {
            samples.removeFirst()
        }
        if samples.count > 64 { samples.removeFirst() }
    }

    var bytesPerSecond: UInt64 {
        guard let first = samples.first, let last = samples.last, last.bytes >= first.bytes else { return 0 }
        let seconds = (last.at - first.at).seconds
        guard seconds > 0.001 else { return 0 }
        return UInt64(Double(last.bytes - first.bytes) / seconds)
    }
}

