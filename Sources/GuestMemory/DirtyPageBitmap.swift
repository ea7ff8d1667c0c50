internal import CSupport

/// One bit per 4 KiB page of guest RAM (by memfd offset), set by any thread
/// that writes guest RAM outside KVM's view, read and cleared in one step
/// when a checkpoint collects the dirty set.
public final class DirtyPageBitmap: @unchecked Sendable {
    public let pageCount: Int
    private let words: UnsafeMutablePointer<UInt64>
    private let wordCount: Int

    public init(pages: Int) {
        pageCount = pages
        wordCount = (pages + 63) / 64
        words = .allocate(capacity: max(wordCount, 1))
        words.initialize(repeating: 0, count: max(wordCount, 1))
    }

    deinit {
        words.deallocate()
    }

    /// Marks the pages holding memfd bytes [offset, offset+length).
    public func mark(memfdOffset offset: Int, length: Int) {
        guard length > 0 else { return }
        let first = offset / GuestMemory.pageSize
        let last = min((offset + length - 1) / GuestMemory.pageSize, pageCount - 1)
        guard first <= last else { return }
        var page = first
        while page <= last {
            let bit = page % 64
            let run = min(64 - bit, last - page + 1)
            let bits = run == 64 ? UInt64.max : ((UInt64(1) << UInt64(run)) - 1) << UInt64(bit)
            colo_atomic_or_u64(words + page / 64, bits)
            page += run
        }
    }

    /// ORs the marked pages into `target` (the same layout: bit p of word
    /// p / 64 is page p) and clears them, one atomic exchange per word;
    /// returns how many of the pages were marked.
    @discardableResult
    public func drain(into target: UnsafeMutablePointer<UInt64>) -> Int {
        var marked = 0
        for index in 0..<wordCount {
            let word = colo_atomic_exchange_u64(words + index, 0)
            guard word != 0 else { continue }
            marked += word.nonzeroBitCount
            target[index] |= word
        }
        return marked
    }

    /// The marked pages (memfd page numbers, ascending); clears them.
    public func takePages() -> [Int] {
        var pages: [Int] = []
        for index in 0..<wordCount {
            var word = colo_atomic_exchange_u64(words + index, 0)
            while word != 0 {
                let bit = word.trailingZeroBitCount
                pages.append(index * 64 + bit)
                word &= word - 1
            }
        }
        return pages
    }
}
