/// The sending end of one page channel: batches of pages read in place from
/// guest RAM, zero pages flagged instead of sent.
/// Unchecked Sendable: `memory` is a shared mapping the caller keeps alive;
/// each sender only reads it.
public struct PageSender: @unchecked Sendable {
    public let socket: PeerSocket
    private let memory: UnsafeRawPointer
    private let pageCount: Int

    /// What one batch put on the wire.
    public struct Sent: Sendable {
        public var pages = 0
        public var zeroPages = 0
        public var bytes = 0

        public init() {}
    }

    /// `memory` is the mapping of `pageCount` guest pages; the caller keeps
    /// it mapped while the sender lives.
    public init(socket: PeerSocket, memory: UnsafeRawPointer, pageCount: Int) {
        self.socket = socket
        self.memory = memory
        self.pageCount = pageCount
    }

    /// Sends `pages` (each < pageCount, at most PageFrame.maxEntries) as one
    /// batch of checkpoint `sequence`.
    public func sendBatch(_ pages: [Int], sequence: UInt64) throws(RAMStreamError) -> Sent {
        precondition(!pages.isEmpty && pages.count <= PageFrame.maxEntries)
        let prefixSize = PageFrame.headerSize + pages.count * PageFrame.entrySize
        var prefix = [UInt8](repeating: 0, count: prefixSize)
        var vectors: [iovec] = []
        vectors.reserveCapacity(pages.count + 1)
        var sent = Sent()
        sent.pages = pages.count
        try prefix.withMutableBytes { (raw) throws(RAMStreamError) in
            PageFrame.Header(kind: .pages, count: pages.count, sequence: sequence).encode(into: raw.baseAddress!)
            vectors.append(iovec(iov_base: raw.baseAddress, iov_len: prefixSize))
            for (index, page) in pages.enumerated() {
                precondition(page < pageCount)
                let address = memory + page * PageFrame.pageSize
                let zero = isZeroPage(address)
                raw.storeBytes(of: PageFrame.entry(page: page, zero: zero).littleEndian,
                               toByteOffset: PageFrame.headerSize + index * PageFrame.entrySize, as: UInt64.self)
                if zero {
                    sent.zeroPages += 1
                    continue
                }
                if let last = vectors.last, vectors.count > 1,
                   last.iov_base! + last.iov_len == UnsafeMutableRawPointer(mutating: address) {
                    vectors[vectors.count - 1].iov_len += PageFrame.pageSize
                } else {
                    vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: address), iov_len: PageFrame.pageSize))
                }
            }
            try socket.send(&vectors)
        }
        sent.bytes = prefixSize + (pages.count - sent.zeroPages) * PageFrame.pageSize
        return sent
    }

    /// Closes checkpoint `sequence` on this channel: it carried `pages`.
    public func sendChannelEnd(sequence: UInt64, pages: UInt64) throws(RAMStreamError) {
        var bytes = [UInt8](repeating: 0, count: PageFrame.headerSize)
        bytes.withUnsafeMutableBytes {
            PageFrame.Header(kind: .channelEnd, count: 0, sequence: sequence, pages: pages).encode(into: $0.baseAddress!)
        }
        try socket.send(bytes)
    }
}

/// The receiving end of one page channel: validates every header and every
/// page number of a batch before a byte of it reaches memory, then reads
/// the pages straight into place (the colo-cache).
/// Unchecked Sendable: `memory` is a mapping the caller keeps alive; receivers
/// of different channels write disjoint batches into it.
public struct PageReceiver: @unchecked Sendable {
    public let socket: PeerSocket
    private let memory: UnsafeMutableRawPointer
    private let pageCount: Int

    public init(socket: PeerSocket, memory: UnsafeMutableRawPointer, pageCount: Int) {
        self.socket = socket
        self.memory = memory
        self.pageCount = pageCount
    }

    /// Waits for the next frame's header, as long as the peer takes.
    public func receiveHeader() throws(RAMStreamError) -> PageFrame.Header {
        var bytes = [UInt8](repeating: 0, count: PageFrame.headerSize)
        try bytes.withMutableBytes { (raw) throws(RAMStreamError) in
            var vector = [iovec(iov_base: raw.baseAddress, iov_len: raw.count)]
            try socket.receive(&vector, idle: true)
        }
        return try bytes.withBytes { (raw) throws(RAMStreamError) in try PageFrame.Header.decode(raw) }
    }

    /// Receives the body of a pages frame with `count` entries: reads and
    /// validates all entries, tells `willWrite` which pages are about to
    /// change (pages with data, zero pages), then writes them: the data
    /// received, and zeros over the zero pages `willWrite` returns (the
    /// others it knows to be zero already: writing them would only fault
    /// in memory that nobody wrote).
    public func receivePages(count: Int, willWrite: (_ pages: [Int], _ zeroPages: [Int]) -> [Int])
        throws(RAMStreamError) -> PageSender.Sent {
        let entryBytes = try socket.receive(count: count * PageFrame.entrySize, idle: false)
        var pages: [Int] = []
        var zeroPages: [Int] = []
        pages.reserveCapacity(count)
        try entryBytes.withBytes { (raw) throws(RAMStreamError) in
            for index in 0..<count {
                let entry = try PageFrame.decodeEntry(raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self),
                                                      pageCount: pageCount)
                if entry.zero { zeroPages.append(entry.page) } else { pages.append(entry.page) }
            }
        }
        let cleared = willWrite(pages, zeroPages)
        for page in cleared {
            (memory + page * PageFrame.pageSize).initializeMemory(as: UInt8.self, repeating: 0, count: PageFrame.pageSize)
        }
        var vectors: [iovec] = []
        vectors.reserveCapacity(pages.count)
        for page in pages {
            let address = memory + page * PageFrame.pageSize
            if let last = vectors.last, last.iov_base! + last.iov_len == address {
                vectors[vectors.count - 1].iov_len += PageFrame.pageSize
            } else {
                vectors.append(iovec(iov_base: address, iov_len: PageFrame.pageSize))
            }
        }
        if !vectors.isEmpty { try socket.receive(&vectors, idle: false) }
        var received = PageSender.Sent()
        received.pages = count
        received.zeroPages = zeroPages.count
        received.bytes = PageFrame.headerSize + entryBytes.count + pages.count * PageFrame.pageSize
        return received
    }
}

/// True when the 4 KiB at `page` are all zero. Word-wise, eight words per
/// step, stopping at the first non-zero block: a page with data usually
/// fails in its first 64 bytes, so the cost falls on zero pages only.
@inline(__always)
public func isZeroPage(_ page: UnsafeRawPointer) -> Bool {
    let words = page.assumingMemoryBound(to: UInt64.self)
    var index = 0
    while index < PageFrame.pageSize / 8 {
        if (words[index] | words[index + 1] | words[index + 2] | words[index + 3]
            | words[index + 4] | words[index + 5] | words[index + 6] | words[index + 7]) != 0 {
            return false
        }
        index += 8
    }
    return true
}

import Glibc
