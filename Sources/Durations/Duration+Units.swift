/// Durations as the whole counts that system calls, wire protocols, logs and
/// metrics take. Every daemon converts at those edges; one definition keeps
/// the rounding the same everywhere: truncated toward zero and saturating,
/// except `millisecondsRoundedUp`, for timeouts that must never become zero.
extension Duration {
    public var nanoseconds: Int64 { whole(perSecond: 1_000_000_000) }
    public var microseconds: Int64 { whole(perSecond: 1_000_000) }
    public var milliseconds: Int64 { whole(perSecond: 1000) }

    /// Whole milliseconds, rounded up: a 0.2 ms poll timeout is 1 ms, not a
    /// busy loop.
    public var millisecondsRoundedUp: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        guard !overflow else { return seconds < 0 ? .min : .max }
        let fraction = attoseconds > 0 ? (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
            : attoseconds / 1_000_000_000_000_000
        return scaled.addingReportingOverflow(fraction).overflow ? .max : scaled + fraction
    }

    /// Seconds as a floating-point number, for rates and Prometheus.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }

    private func whole(perSecond units: Int64) -> Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: units)
        guard !overflow else { return seconds < 0 ? .min : .max }
        let fraction = attoseconds / (1_000_000_000_000_000_000 / units)
        let (sum, sumOverflow) = scaled.addingReportingOverflow(fraction)
        return sumOverflow ? (seconds < 0 ? .min : .max) : sum
    }
}
