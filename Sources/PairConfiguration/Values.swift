/// Parsers for the value types a configuration uses, shared with command-line
/// flags that take the same forms (one syntax for an address everywhere).
/// Each returns nil on a malformed value; `SectionReader` turns that into a
/// located error that says what form was expected.
public enum ValueParser {
    /// "250ms", "2s", "1.5s", "1m": durations with a unit, never bare numbers
    /// (is "5" seconds or milliseconds? the file must say).
    public static func duration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1), ("m", 60)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            guard let value = Double(number), value.isFinite, value >= 0, value * scale <= 86_400 else { return nil }
            return .nanoseconds(Int64((value * scale * 1e9).rounded()))
        }
        return nil
    }

    /// "128M", "1G", "4096" (bytes), "64K"; binary multiples.
    public static func size(_ text: String) -> UInt64? {
        let multipliers: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(text)
        var multiplier: UInt64 = 1
        if let last = digits.last, let scale = multipliers[last] {
            multiplier = scale
            digits = digits.dropLast()
        }
        guard let value = UInt64(digits) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }

    public static func integer(_ text: String, in range: ClosedRange<Int>) -> Int? {
        guard let value = Int(text), range.contains(value) else { return nil }
        return value
    }

    /// "10.0.0.1:7600" or "[fd00::1]:7600".
    public static func socketAddress(_ text: String) -> SocketAddress? {
        let host: Substring, port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return nil
            }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
            guard IPAddress(String(host))?.isV6 == true else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            guard IPAddress(String(host))?.isV6 == false else { return nil }
        }
        guard let number = UInt16(port), number > 0, let address = IPAddress(String(host)) else { return nil }
        return SocketAddress(host: address, port: number)
    }

    /// "52:54:00:12:34:56", a unicast address.
    public static func macAddress(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6, bytes[0] & 1 == 0 else { return nil }
        return bytes
    }

    /// An absolute path without NUL or newline.
    public static func absolutePath(_ text: String) -> String? {
        text.hasPrefix("/") && !text.contains("\0") && text.count < 4096 ? text : nil
    }
}

/// An IPv4 or IPv6 address in its textual form, validated.
public struct IPAddress: Sendable, Equatable, Hashable, CustomStringConvertible {
    public let text: String
    public let isV6: Bool

    public init?(_ text: String) {
        if let v4 = IPAddress.parseV4(text) {
            self.text = v4.map(String.init).joined(separator: ".")
            isV6 = false
        } else if IPAddress.isValidV6(text) {
            self.text = text
            isV6 = true
        } else {
            return nil
        }
    }

    public var description: String { text }

    /// The four octets of a dotted-quad IPv4 address.
    public var v4Octets: [UInt8]? { isV6 ? nil : IPAddress.parseV4(text) }

    static func parseV4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        let octets = parts.compactMap { part -> UInt8? in
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), part.allSatisfy(\.isNumber),
                  part.count == 1 || part.first != "0" else { return nil }
            return UInt8(part)
        }
        return octets.count == 4 ? octets : nil
    }

    static func isValidV6(_ text: String) -> Bool {
        guard text.contains(":"), text.count <= 45 else { return false }
        let groups = text.components(separatedBy: "::")
        guard groups.count <= 2 else { return false }
        let hexGroups = groups.flatMap { $0.isEmpty ? [] : $0.split(separator: ":", omittingEmptySubsequences: false) }
        guard hexGroups.allSatisfy({ (1...4).contains($0.count) && UInt16($0, radix: 16) != nil }) else { return false }
        return groups.count == 2 ? hexGroups.count < 8 : hexGroups.count == 8
    }
}

/// A host and a TCP port.
public struct SocketAddress: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var host: IPAddress
    public var port: UInt16

    public init(host: IPAddress, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var description: String { host.isV6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension String {
    func components(separatedBy separator: String) -> [String] {
        var parts: [String] = []
        var rest = Substring(self)
        while let range = rest.range(of: separator) {
            parts.append(String(rest[..<range.lowerBound]))
            rest = rest[range.upperBound...]
        }
        parts.append(String(rest))
        return parts
    }
}

extension Substring {
    func range(of needle: String) -> Range<Substring.Index>? {
        guard !needle.isEmpty, count >= needle.count else { return nil }
        var index = startIndex
        while let end = self.index(index, offsetBy: needle.count, limitedBy: endIndex) {
            if self[index..<end] == needle { return index..<end }
            index = self.index(after: index)
        }
        return nil
    }
}
