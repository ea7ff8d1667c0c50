import GuestMemory
import Glibc

/// Scatter-gather over guest buffers: host iovecs for a list of guest
/// segments, starting some bytes in. Lets a backend socket read into or
/// write from guest RAM directly, with no bounce buffer.
enum GuestIO {
    /// iovecs for `segments` skipping their first `skip` bytes (pointers
    /// marked as device-written when `forWriting`).
    static func vectors(_ segments: [GuestSegment], skipping skip: Int, memory: GuestMemory,
                        forWriting: Bool) throws(GuestMemoryError) -> [iovec] {
        var vectors: [iovec] = []
        var remainingSkip = skip
        for segment in segments {
            let length = Int(segment.length)
            if remainingSkip >= length {
                remainingSkip -= length
                continue
            }
            let address = segment.address + UInt64(remainingSkip)
            let count = length - remainingSkip
            remainingSkip = 0
            let pointer = forWriting ? try memory.pointer(forWritingAt: address, length: count)
                                     : try memory.pointer(at: address, length: count)
            vectors.append(iovec(iov_base: pointer, iov_len: count))
        }
        return vectors
    }

    /// `segments` cut to the byte range [start, start+count).
    static func slice(_ segments: [GuestSegment], from start: Int, count: Int) -> [GuestSegment] {
        var result: [GuestSegment] = []
        var offset = 0
        for segment in segments {
            let length = Int(segment.length)
            let lower = max(start, offset), upper = min(start + count, offset + length)
            if lower < upper {
                result.append(GuestSegment(address: segment.address + UInt64(lower - offset),
                                           length: UInt32(upper - lower)))
            }
            offset += length
        }
        return result
    }

    /// Copies the first `count` bytes of `segments` out of guest RAM.
    static func gather(_ segments: [GuestSegment], count: Int, memory: GuestMemory) throws(GuestMemoryError) -> [UInt8] {
        var bytes: [UInt8] = []
        for segment in slice(segments, from: 0, count: count) {
            bytes += try memory.read(at: segment.address, count: Int(segment.length))
        }
        return bytes
    }

    /// Copies `bytes` into guest RAM across `segments`.
    static func scatter(_ bytes: [UInt8], into segments: [GuestSegment], memory: GuestMemory) throws(GuestMemoryError) {
        var offset = 0
        for segment in slice(segments, from: 0, count: bytes.count) {
            try memory.write(bytes[offset..<offset + Int(segment.length)], at: segment.address)
            offset += Int(segment.length)
        }
    }
}
