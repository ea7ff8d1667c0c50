import Glibc

/// Latency samples in nanoseconds and the figures reported from them.
struct LatencySamples {
    private(set) var nanoseconds: [UInt64] = []

    init(capacity: Int) {
        nanoseconds.reserveCapacity(capacity)
    }

    mutating func record(_ value: UInt64) {
        nanoseconds.append(value)
    }

    /// The value below which `fraction` of the samples lie.
    func percentile(_ fraction: Double) -> Double {
        guard !nanoseconds.isEmpty else { return .nan }
        let sorted = nanoseconds.sorted()
        let index = min(sorted.count - 1, Int((Double(sorted.count) * fraction).rounded(.down)))
        return Double(sorted[index])
    }
}

/// Monotonic nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

func formatMicroseconds(_ nanoseconds: Double) -> String {
    String(format: "%.1f µs", nanoseconds / 1000)
}

func format(_ value: Double, decimals: Int = 2) -> String {
    String(format: "%.\(decimals)f", value)
}

extension String {
    init(format: String, _ value: Double) {
        var buffer = [CChar](repeating: 0, count: 64)
        _ = withVaList([value]) { vsnprintf(&buffer, buffer.count, format, $0) }
        self = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
