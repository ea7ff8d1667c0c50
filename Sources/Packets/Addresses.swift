/// An Ethernet address (in the low 48 bits, network order from the top).
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let value: UInt64

    public static let broadcast = MACAddress(value: 0xffff_ffff_ffff)
    public static let zero = MACAddress(value: 0)

    public init(value: UInt64) { self.value = value & 0xffff_ffff_ffff }

    init(frame: [UInt8], at offset: Int) {
        var value: UInt64 = 0
        for index in offset..<offset + 6 { value = value << 8 | UInt64(frame[index]) }
        self.value = value
    }

    /// "52:54:00:12:34:56", or nil.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var value: UInt64 = 0
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            value = value << 8 | UInt64(byte)
        }
        self.value = value
    }

    public var bytes: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: value >> (40 - 8 * $0)) } }

    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }
}

/// An IPv4 or IPv6 address as two 64-bit halves (IPv4 in the low 32 bits),
/// cheap to hash in a flow key.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64
    public let isIPv4: Bool

    init(ipv4 frame: [UInt8], at offset: Int) {
        high = 0
        low = UInt64(frame.u32(at: offset))
        isIPv4 = true
    }

    init(ipv6 frame: [UInt8], at offset: Int) {
        high = UInt64(frame.u32(at: offset)) << 32 | UInt64(frame.u32(at: offset + 4))
        low = UInt64(frame.u32(at: offset + 8)) << 32 | UInt64(frame.u32(at: offset + 12))
        isIPv4 = false
    }

    /// Dotted quad or RFC 4291 text ("10.0.0.2", "fd00::2"), or nil.
    public init?(_ text: String) {
        guard let bytes = text.contains(":") ? Self.parseIPv6(text) : Self.parseIPv4(text) else { return nil }
        if bytes.count == 4 {
            self.init(ipv4: bytes, at: 0)
        } else {
            self.init(ipv6: bytes, at: 0)
        }
    }

    /// The address in network order: 4 or 16 bytes.
    public var bytes: [UInt8] {
        if isIPv4 { return (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * $0)) } }
        return (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
    }

    private static func parseIPv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, let byte = UInt8(part) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    private static func parseIPv6(_ text: String) -> [UInt8]? {
        let halves = text.split(separator: "::", maxSplits: 2, omittingEmptySubsequences: false)
        guard halves.count <= 2 else { return nil }
        func groups(_ part: Substring) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            for group in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(group.count), let value = UInt16(group, radix: 16) else { return nil }
                result.append(value)
            }
            return result
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count < 8 else { return nil }
            all += [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        }
        guard all.count == 8 else { return nil }
        return all.flatMap { $0.bigEndianBytes }
    }

    public var description: String {
        let bytes = self.bytes
        if isIPv4 { return bytes.map { String($0) }.joined(separator: ".") }
        return stride(from: 0, to: 16, by: 2)
            .map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            .joined(separator: ":")
    }
}
