/// A set of guest pages as a bitmap: the format vmmd's dirty log, the
/// primary's queue of pages to send and the secondary's record of pages
/// received all share (Proto/colo/control/checkpointd.proto): bit i is guest
/// page i (4 KiB at offset i * 4096), bit i % 64 of little-endian 64-bit
/// word i / 64, exactly ceil(pages / 64) words, no bits past the last page.
public struct PageBitmap: Sendable, Equatable {
    public private(set) var words: [UInt64]
    public let pageCount: Int

    /// An empty set over `pageCount` pages.
    public init(pageCount: Int) {
        self.pageCount = pageCount
        self.words = [UInt64](repeating: 0, count: Self.wordCount(pages: pageCount))
    }

    /// Every page.
    public static func full(pageCount: Int) -> PageBitmap {
        var bitmap = PageBitmap(pageCount: pageCount)
        for index in bitmap.words.indices { bitmap.words[index] = ~0 }
        bitmap.clearBitsPastEnd()
        return bitmap
    }

    /// Parses the serialized form (the bytes of a dirty-bitmap memfd),
    /// refusing a wrong length or a bit naming a page past the end.
    public init(serialized bytes: [UInt8], pageCount: Int) throws(PageBitmapError) {
        let expected = Self.byteCount(pages: pageCount)
        guard bytes.count == expected else {
            throw .wrongSize(bytes: bytes.count, expected: expected, pages: pageCount)
        }
        self.init(pageCount: pageCount)
        bytes.withUnsafeBytes { raw in
            for index in words.indices {
                words[index] = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self))
            }
        }
        if let last = words.last, last & ~lastWordMask != 0 {
            let page = (words.count - 1) * 64 + (63 - last.leadingZeroBitCount)
            throw .pageOutOfRange(page: page, pages: pageCount)
        }
    }

    /// The serialized form.
    public var serialized: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: words.count * 8)
        bytes.withUnsafeMutableBytes { raw in
            for (index, word) in words.enumerated() {
                raw.storeBytes(of: word.littleEndian, toByteOffset: index * 8, as: UInt64.self)
            }
        }
        return bytes
    }

    public static func wordCount(pages: Int) -> Int { (pages + 63) / 64 }
    public static func byteCount(pages: Int) -> Int { wordCount(pages: pages) * 8 }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    public func contains(_ page: Int) -> Bool {
        words[page >> 6] & (1 << UInt64(page & 63)) != 0
    }

    public mutating func insert(_ page: Int) {
        words[page >> 6] |= 1 << UInt64(page & 63)
    }

    public mutating func remove(_ page: Int) {
        words[page >> 6] &= ~(1 << UInt64(page & 63))
    }

    /// Adds every page of `other` (same page count).
    public mutating func formUnion(_ other: PageBitmap) {
        precondition(other.pageCount == pageCount, "bitmaps over different RAM sizes")
        for index in words.indices { words[index] |= other.words[index] }
    }

    public mutating func removeAll() {
        for index in words.indices { words[index] = 0 }
    }

    /// Takes whole words from `cursor` on, every `stride`-th word, until at
    /// least `limit` pages are collected (or the end), clearing them: how a
    /// sender claims its next batch. Advances `cursor` past the words taken.
    public mutating func take(from cursor: inout Int, stride: Int = 1, limit: Int, into pages: inout [Int]) {
        while cursor < words.count && pages.count < limit {
            var word = words[cursor]
            if word != 0 {
                words[cursor] = 0
                let first = cursor << 6
                while word != 0 {
                    pages.append(first + word.trailingZeroBitCount)
                    word &= word - 1
                }
            }
            cursor += stride
        }
    }

    /// Calls `body` with each run of consecutive pages (first page, count)
    /// among words `range`: copies coalesce a run into one memcpy.
    public func forEachRun(inWords range: Range<Int>, _ body: (Int, Int) -> Void) {
        var runStart = -1
        var runLength = 0
        for index in range {
            var word = words[index]
            if word == 0 { continue }
            if word == ~0 {
                let first = index << 6
                if runStart >= 0 && runStart + runLength == first {
                    runLength += 64
                } else {
                    if runStart >= 0 { body(runStart, runLength) }
                    runStart = first
                    runLength = 64
                }
                continue
            }
            while word != 0 {
                let page = (index << 6) + word.trailingZeroBitCount
                word &= word - 1
                if runStart >= 0 && runStart + runLength == page {
                    runLength += 1
                } else {
                    if runStart >= 0 { body(runStart, runLength) }
                    runStart = page
                    runLength = 1
                }
            }
        }
        if runStart >= 0 { body(runStart, runLength) }
    }

    private var lastWordMask: UInt64 {
        let used = pageCount & 63
        return used == 0 ? ~0 : (1 << UInt64(used)) - 1
    }

    private mutating func clearBitsPastEnd() {
        if !words.isEmpty { words[words.count - 1] &= lastWordMask }
    }
}

public enum PageBitmapError: Error, Sendable, Equatable, CustomStringConvertible {
    case wrongSize(bytes: Int, expected: Int, pages: Int)
    case pageOutOfRange(page: Int, pages: Int)

    public var description: String {
        switch self {
        case let .wrongSize(bytes, expected, pages):
            return "dirty bitmap of \(bytes) bytes; RAM of \(pages) pages needs exactly \(expected)"
        case let .pageOutOfRange(page, pages):
            return "dirty bitmap marks page \(page), past the last of \(pages) pages"
        }
    }
}
