/// The frames of a page channel (primary -> secondary only), little-endian:
///
///     header (32 bytes)
///       0  magic "CRAM"
///       4  version (1)            5  kind (1 pages, 2 channel end)
///       6  flags (0)              8  count: entries that follow (pages)
///      12  reserved (0)          16  sequence: the checkpoint these pages belong to
///      24  pages: channel end: pages this channel carried for the sequence
///     pages: count entries of 8 bytes (page number in bits 0-51, bit 63 set
///            for a zero page, other bits 0), then the 4 KiB of every entry
///            without the zero flag, in entry order.
///
/// Pages sent in the background between checkpoints carry the sequence of
/// the next checkpoint; the channel-end frame closes that checkpoint on the
/// channel, so the secondary knows when it has every page.
public enum PageFrame {
    public static let magic: [UInt8] = Array("CRAM".utf8)
    public static let version: UInt8 = 1
    public static let headerSize = 32
    public static let entrySize = 8
    public static let pageSize = 4096
    /// Pages one frame may name; bounds what a receiver reads before it has
    /// validated anything.
    public static let maxEntries = 1024
    static let zeroFlag: UInt64 = 1 << 63
    static let pageNumberMask: UInt64 = (1 << 52) - 1

    public enum Kind: UInt8, Sendable {
        case pages = 1
        case channelEnd = 2
    }

    public struct Header: Sendable, Equatable {
        public var kind: Kind
        public var count: Int
        public var sequence: UInt64
        public var pages: UInt64

        public init(kind: Kind, count: Int, sequence: UInt64, pages: UInt64 = 0) {
            self.kind = kind
            self.count = count
            self.sequence = sequence
            self.pages = pages
        }

        public func encode(into buffer: UnsafeMutableRawPointer) {
            let bytes = UnsafeMutableRawBufferPointer(start: buffer, count: PageFrame.headerSize)
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            bytes.copyBytes(from: PageFrame.magic)
            bytes[4] = PageFrame.version
            bytes[5] = kind.rawValue
            bytes.storeBytes(of: UInt32(count).littleEndian, toByteOffset: 8, as: UInt32.self)
            bytes.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            bytes.storeBytes(of: pages.littleEndian, toByteOffset: 24, as: UInt64.self)
        }

        /// Validates everything a header alone can tell.
        public static func decode(_ buffer: UnsafeRawBufferPointer) throws(RAMStreamError) -> Header {
            precondition(buffer.count == PageFrame.headerSize)
            guard Array(buffer[0..<4]) == PageFrame.magic else {
                throw .badFrame("bad magic \(hex(buffer[0..<4])) (expected \"CRAM\")")
            }
            guard buffer[4] == PageFrame.version else {
                throw .badFrame("page frame version \(buffer[4]), expected \(PageFrame.version)")
            }
            guard let kind = Kind(rawValue: buffer[5]) else { throw .badFrame("unknown page frame kind \(buffer[5])") }
            let flags = buffer.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
            let reserved = buffer.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
            guard flags == 0, reserved == 0 else { throw .badFrame("reserved header fields are not zero") }
            let count = Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            let sequence = UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            let pages = UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
            switch kind {
            case .pages:
                guard (1...PageFrame.maxEntries).contains(count) else {
                    throw .badFrame("a page batch of \(count) entries (1...\(PageFrame.maxEntries) allowed)")
                }
                guard pages == 0 else { throw .badFrame("a page batch with a page total") }
            case .channelEnd:
                guard count == 0 else { throw .badFrame("a channel end with \(count) entries") }
            }
            return Header(kind: kind, count: count, sequence: sequence, pages: pages)
        }
    }

    /// One entry: a page number, and whether the page is all zeros.
    public static func entry(page: Int, zero: Bool) -> UInt64 {
        UInt64(page) | (zero ? zeroFlag : 0)
    }

    /// Decodes an entry, refusing a page outside RAM or stray bits.
    public static func decodeEntry(_ raw: UInt64, pageCount: Int) throws(RAMStreamError) -> (page: Int, zero: Bool) {
        let value = UInt64(littleEndian: raw)
        guard value & ~(pageNumberMask | zeroFlag) == 0 else {
            throw .badFrame("page entry \(String(value, radix: 16)) has reserved bits set")
        }
        let page = value & pageNumberMask
        guard page < UInt64(pageCount) else { throw .pageOutOfRange(page: page, pages: pageCount) }
        return (Int(page), value & zeroFlag != 0)
    }
}

func hex<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    bytes.map { byte in
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }.joined()
}
