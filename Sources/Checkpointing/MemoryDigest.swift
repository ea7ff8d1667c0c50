import RAMStream

/// Verify mode's fingerprint of RAM: one 64-bit hash per 1 MiB chunk,
/// computed on several threads. Not cryptographic: it detects a copy gone
/// wrong (a forgotten zero page, a torn page), not an adversary, who would
/// have to hold the peer key first.
public enum MemoryDigest {
    public static let chunkBytes = 1 << 20

    public static func chunkCount(size: Int) -> Int { (size + chunkBytes - 1) / chunkBytes }

    public static func hashes(of memory: UnsafeRawPointer, size: Int, threads: Int) -> [UInt64] {
        let count = chunkCount(size: size)
        let output = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: count)
        defer { output.deallocate() }
        let shared = SharedBuffer(memory: memory, output: output)
        runInParallel(threads: min(threads, count)) { index in
            var chunk = index
            while chunk < count {
                let start = chunk * chunkBytes
                shared.output[chunk] = hash(shared.memory + start, bytes: min(chunkBytes, size - start), seed: UInt64(chunk))
                chunk += threads
            }
        }
        return Array(output)
    }

    /// Compares the secondary's hashes with the primary's.
    public static func compare(local: [UInt64], peer: [UInt64]) -> Verification {
        var differing: UInt32 = 0
        var first: UInt64 = 0
        for index in 0..<min(local.count, peer.count) where local[index] != peer[index] {
            if differing == 0 { first = UInt64(index * chunkBytes) }
            differing += 1
        }
        if local.count != peer.count {
            if differing == 0 { first = UInt64(min(local.count, peer.count) * chunkBytes) }
            differing += UInt32(abs(local.count - peer.count))
        }
        return Verification(checked: true, chunksCompared: UInt32(max(local.count, peer.count)),
                            chunksDiffering: differing, firstDifferenceOffset: first)
    }

    /// Four independent multiply-rotate lanes over 64-bit words, so the CPU
    /// overlaps them; folded at the end.
    static func hash(_ memory: UnsafeRawPointer, bytes: Int, seed: UInt64) -> UInt64 {
        let prime: UInt64 = 0x9E37_79B1_85EB_CA87
        var lanes: (UInt64, UInt64, UInt64, UInt64) = (seed, seed ^ 0x1, seed ^ 0x2, seed ^ 0x3)
        let words = memory.assumingMemoryBound(to: UInt64.self)
        let count = bytes / 8
        var index = 0
        while index + 4 <= count {
            lanes.0 = ((lanes.0 ^ words[index]) &* prime).rotated(31)
            lanes.1 = ((lanes.1 ^ words[index + 1]) &* prime).rotated(31)
            lanes.2 = ((lanes.2 ^ words[index + 2]) &* prime).rotated(31)
            lanes.3 = ((lanes.3 ^ words[index + 3]) &* prime).rotated(31)
            index += 4
        }
        while index < count {
            lanes.0 = ((lanes.0 ^ words[index]) &* prime).rotated(31)
            index += 1
        }
        var result = lanes.0 &+ lanes.1.rotated(7) &+ lanes.2.rotated(12) &+ lanes.3.rotated(18)
        result ^= result >> 29
        result = result &* prime
        return result ^ (result >> 32)
    }

    private struct SharedBuffer: @unchecked Sendable {
        let memory: UnsafeRawPointer
        let output: UnsafeMutableBufferPointer<UInt64>
    }
}

extension UInt64 {
    func rotated(_ count: UInt64) -> UInt64 { (self << count) | (self >> (64 - count)) }
}
