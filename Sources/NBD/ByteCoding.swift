/// Reads big-endian fields from a byte buffer, as the NBD wire lays them
/// out. Every read is bounds-checked: running short is an error the parser
/// turns into its own, never a trap.
public struct BigEndianReader {
    private let bytes: [UInt8]
    public private(set) var position: Int

    public init(_ bytes: [UInt8], position: Int = 0) {
        self.bytes = bytes
        self.position = position
    }

    public var remaining: Int { bytes.count - position }

    public struct Underflow: Error {}

    public mutating func uint16() throws(Underflow) -> UInt16 {
        UInt16(truncatingIfNeeded: try unsigned(2))
    }

    public mutating func uint32() throws(Underflow) -> UInt32 {
        UInt32(truncatingIfNeeded: try unsigned(4))
    }

    public mutating func uint64() throws(Underflow) -> UInt64 {
        try unsigned(8)
    }

    public mutating func bytes(_ count: Int) throws(Underflow) -> [UInt8] {
        guard count >= 0, count <= remaining else { throw Underflow() }
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    private mutating func unsigned(_ width: Int) throws(Underflow) -> UInt64 {
        guard width <= remaining else { throw Underflow() }
        var value: UInt64 = 0
        for index in position..<(position + width) {
            value = value << 8 | UInt64(bytes[index])
        }
        position += width
        return value
    }
}

/// Appends big-endian fields.
public struct BigEndianWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) {
        bytes.reserveCapacity(capacity)
    }

    public mutating func uint16(_ value: UInt16) { append(UInt64(value), width: 2) }
    public mutating func uint32(_ value: UInt32) { append(UInt64(value), width: 4) }
    public mutating func uint64(_ value: UInt64) { append(value, width: 8) }
    public mutating func bytes(_ more: [UInt8]) { bytes += more }
    public mutating func string(_ text: String) { bytes += Array(text.utf8) }

    private mutating func append(_ value: UInt64, width: Int) {
        for shift in stride(from: (width - 1) * 8, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        }
    }
}
