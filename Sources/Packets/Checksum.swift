/// The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
public enum InternetChecksum {
    /// One's-complement sum of `bytes[range]` added to `initial`, not yet
    /// folded or complemented (so sums can be chained: pseudo-header, then data).
    public static func sum(_ bytes: [UInt8], _ range: Range<Int>, initial: UInt64 = 0) -> UInt64 {
        var total = initial
        var index = range.lowerBound
        while index + 1 < range.upperBound {
            total += UInt64(bytes.u16(at: index))
            index += 2
        }
        if index < range.upperBound { total += UInt64(bytes[index]) << 8 }
        return total
    }

    /// Folds a sum to 16 bits and complements it: the value for the header field.
    public static func finish(_ sum: UInt64) -> UInt16 {
        var folded = sum
        while folded > 0xffff { folded = (folded & 0xffff) + (folded >> 16) }
        return ~UInt16(folded)
    }

    /// The pseudo-header sum TCP, UDP and ICMPv6 checksums start from.
    public static func pseudoHeaderSum(source: IPAddress, destination: IPAddress, protocolNumber: UInt8,
                                       length: Int) -> UInt64 {
        func words(_ address: IPAddress) -> UInt64 {
            address.isIPv4 ? (address.low >> 16) + (address.low & 0xffff)
                : [address.high, address.low].reduce(0) { total, half in
                    total + (half >> 48) + (half >> 32 & 0xffff) + (half >> 16 & 0xffff) + (half & 0xffff)
                }
        }
        return words(source) + words(destination) + UInt64(protocolNumber) + UInt64(length >> 16) + UInt64(length & 0xffff)
    }

    /// The checksum after one 16-bit word of the covered data changed from
    /// `old` to `new` (RFC 1624, eqn. 3): rewriting never re-reads the payload.
    public static func updated(_ checksum: UInt16, replacing old: UInt16, with new: UInt16) -> UInt16 {
        var sum = UInt32(~checksum) + UInt32(~old) + UInt32(new)
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
