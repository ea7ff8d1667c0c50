import BlockDevice
import Glibc

/// The active and hidden disks of the secondary: a file holding, for each
/// 512-byte sector of the disk, one allocation bit and (when allocated) the
/// sector's data. What is not allocated is looked up in the layer below.
///
/// Format (little-endian), made for tmpfs:
///
///     0      header: "COLOOVL1", version u32 = 1, sector size u32 = 512,
///            capacity u64, bitmap offset u64, data offset u64
///     4096   bitmap: one bit per sector, in u64 words, sector s = word
///            s / 64, bit s % 64
///     data   sector s at data offset + s * 512 (sparse: only allocated
///            sectors hold pages)
///
/// The bitmap is mapped shared, so every bit set is in the page cache at
/// once: a killed blockd leaves a consistent overlay behind. Data is
/// written before its bit, so a set bit always covers written data.
/// Unallocated sectors read as zeros (opening an existing overlay clears
/// what a killed blockd wrote without setting its bit), so marking them
/// allocated as zeros costs no I/O: the copy-before-write of a hole is a
/// bit flip.
///
/// An in-memory set of the non-zero bitmap words makes emptying cost time
/// in proportion to what the overlay holds (one hole punched and one word
/// cleared per run of allocated words), not to the disk's size.
///
/// Not thread-safe: the disk stack that owns the overlay serialises access.
public final class OverlayImage: @unchecked Sendable {
    public static let sectorSize: UInt64 = 512
    static let magic = Array("COLOOVL1".utf8)
    static let version: UInt32 = 1
    static let bitmapOffset: UInt64 = 4096

    public let path: String
    public let capacity: UInt64
    public let sectorCount: UInt64
    private let fd: Int32
    private let dataOffset: UInt64
    private let bitmap: UnsafeMutablePointer<UInt64>
    private let bitmapWords: Int
    private let mappedLength: Int
    private var nonEmptyWords: Set<Int> = []
    public private(set) var allocatedSectors: UInt64 = 0

    /// Opens the overlay at `path` for a disk of `capacity` bytes (a
    /// multiple of 512), creating it when absent. An existing file must
    /// be an overlay of the same capacity: its contents are kept.
    public init(path: String, capacity: UInt64) throws(BlockError) {
        guard capacity > 0, capacity % Self.sectorSize == 0 else {
            throw .unsupported("overlay capacity \(capacity) is not a positive multiple of 512")
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(operation: "open \(path)", errno: errno) }
        sectorCount = capacity / Self.sectorSize
        bitmapWords = Int((sectorCount + 63) / 64)
        let bitmapBytes = (UInt64(bitmapWords) * 8 + 4095) / 4096 * 4096
        dataOffset = (Self.bitmapOffset + bitmapBytes + (1 << 20) - 1) / (1 << 20) * (1 << 20)
        mappedLength = Int(bitmapBytes)
        self.path = path
        self.capacity = capacity
        self.fd = fd
        var existed = false
        do throws(BlockError) {
            var status = stat()
            guard fstat(fd, &status) == 0 else { throw .io(operation: "fstat \(path)", errno: errno) }
            if status.st_size == 0 {
                try Self.writeHeader(fd: fd, capacity: capacity, dataOffset: dataOffset)
                guard ftruncate(fd, off_t(dataOffset + capacity)) == 0 else {
                    throw .io(operation: "ftruncate \(path)", errno: errno)
                }
            } else {
                try Self.checkHeader(fd: fd, path: path, capacity: capacity, dataOffset: dataOffset)
                existed = true
            }
            let mapped = mmap(nil, mappedLength, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(Self.bitmapOffset))
            guard let mapped, mapped != MAP_FAILED else { throw .io(operation: "mmap \(path)", errno: errno) }
            bitmap = mapped.bindMemory(to: UInt64.self, capacity: bitmapWords)
        } catch {
            close(fd)
            throw error
        }
        for index in 0..<bitmapWords where bitmap[index] != 0 {
            nonEmptyWords.insert(index)
            allocatedSectors += UInt64(bitmap[index].nonzeroBitCount)
        }
        // Throwing from here on runs deinit, which unmaps and closes.
        if existed { try clearUnallocated() }
    }

    /// Punches the gaps between allocated runs, so every unallocated
    /// sector reads as zeros. Costs one hole per run, not the disk's size.
    private func clearUnallocated() throws(BlockError) {
        var next: UInt64 = 0
        for run in allocatedRuns() + [sectorCount..<sectorCount] {
            try FileIO.zero(fd, at: dataOffset + next * Self.sectorSize, length: (run.lowerBound - next) * Self.sectorSize)
            next = run.upperBound
        }
    }

    deinit {
        munmap(bitmap, mappedLength)
        close(fd)
    }

    private static func writeHeader(fd: Int32, capacity: UInt64, dataOffset: UInt64) throws(BlockError) {
        var header = magic
        func append<T: FixedWidthInteger>(_ value: T) {
            withUnsafeBytes(of: value.littleEndian) { header += $0 }
        }
        append(version)
        append(UInt32(sectorSize))
        append(capacity)
        append(bitmapOffset)
        append(dataOffset)
        try header.withUnsafeBytes { bytes in
            Result { () throws(BlockError) in try FileIO.write(fd, bytes, at: 0) }
        }.get()
    }

    private static func checkHeader(fd: Int32, path: String, capacity: UInt64, dataOffset: UInt64) throws(BlockError) {
        var header = [UInt8](repeating: 0, count: 40)
        try header.withUnsafeMutableBytes { bytes in
            Result { () throws(BlockError) in try FileIO.read(fd, into: bytes, at: 0) }
        }.get()
        func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            header.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        guard Array(header[0..<8]) == magic, field(8, UInt32.self) == version,
              field(12, UInt32.self) == UInt32(sectorSize) else {
            throw .unsupported("\(path) is not a version \(version) overlay")
        }
        guard field(16, UInt64.self) == capacity, field(24, UInt64.self) == bitmapOffset,
              field(32, UInt64.self) == dataOffset else {
            throw .unsupported("\(path) is an overlay of \(field(16, UInt64.self)) bytes, not \(capacity)")
        }
    }

    // MARK: Bits

    public func isAllocated(_ sector: UInt64) -> Bool {
        bitmap[Int(sector / 64)] & (1 << (sector % 64)) != 0
    }

    /// The runs of `sectors`, in order, each wholly allocated or not.
    public func runs(_ sectors: Range<UInt64>) -> [(sectors: Range<UInt64>, allocated: Bool)] {
        var result: [(sectors: Range<UInt64>, allocated: Bool)] = []
        var start = sectors.lowerBound
        while start < sectors.upperBound {
            let allocated = isAllocated(start)
            var end = start + 1
            while end < sectors.upperBound {
                // Skip whole words that are uniformly (un)allocated.
                if end % 64 == 0 && end + 64 <= sectors.upperBound {
                    let word = bitmap[Int(end / 64)]
                    if word == (allocated ? UInt64.max : 0) {
                        end += 64
                        continue
                    }
                }
                guard isAllocated(end) == allocated else { break }
                end += 1
            }
            result.append((start..<end, allocated))
            start = end
        }
        return result
    }

    /// Every allocated run, in order (what a commit copies down).
    public func allocatedRuns() -> [Range<UInt64>] {
        var result: [Range<UInt64>] = []
        for word in nonEmptyWords.sorted() {
            let first = UInt64(word) * 64
            for run in runs(first..<min(first + 64, sectorCount)) where run.allocated {
                if let last = result.last, last.upperBound == run.sectors.lowerBound {
                    result[result.count - 1] = last.lowerBound..<run.sectors.upperBound
                } else {
                    result.append(run.sectors)
                }
            }
        }
        return result
    }

    private func markAllocated(_ sectors: Range<UInt64>) {
        for sector in sectors {
            let index = Int(sector / 64)
            let bit: UInt64 = 1 << (sector % 64)
            if bitmap[index] & bit == 0 {
                bitmap[index] |= bit
                allocatedSectors += 1
                nonEmptyWords.insert(index)
            }
        }
    }

    // MARK: Data

    /// Reads whole sectors (allocated or not: unallocated ones read as
    /// zeros, callers look them up below instead).
    public func readSectors(into buffer: UnsafeMutableRawBufferPointer, first sector: UInt64) throws(BlockError) {
        try FileIO.read(fd, into: buffer, at: dataOffset + sector * Self.sectorSize)
    }

    /// Stores whole sectors and marks them allocated.
    public func writeSectors(_ data: UnsafeRawBufferPointer, first sector: UInt64) throws(BlockError) {
        precondition(UInt64(data.count) % Self.sectorSize == 0, "overlay writes are whole sectors")
        try FileIO.write(fd, data, at: dataOffset + sector * Self.sectorSize)
        markAllocated(sector..<(sector + UInt64(data.count) / Self.sectorSize))
    }

    /// Marks sectors allocated as zeros (shadowing what lies below). Only
    /// sectors already allocated need their data cleared.
    public func zeroSectors(_ sectors: Range<UInt64>) throws(BlockError) {
        for run in runs(sectors) where run.allocated {
            try FileIO.zero(fd, at: dataOffset + run.sectors.lowerBound * Self.sectorSize,
                            length: UInt64(run.sectors.count) * Self.sectorSize)
        }
        markAllocated(sectors)
    }

    /// Makes the overlay empty: every allocated word's data is released
    /// and its bits cleared. Costs time in proportion to what it held.
    public func empty() throws(BlockError) {
        let words = nonEmptyWords.sorted()
        var index = 0
        while index < words.count {
            var end = index + 1
            while end < words.count && words[end] == words[end - 1] + 1 { end += 1 }
            let firstSector = UInt64(words[index]) * 64
            let lastSector = min(UInt64(words[end - 1] + 1) * 64, sectorCount)
            try FileIO.zero(fd, at: dataOffset + firstSector * Self.sectorSize,
                            length: (lastSector - firstSector) * Self.sectorSize)
            for word in words[index..<end] { bitmap[word] = 0 }
            index = end
        }
        nonEmptyWords.removeAll()
        allocatedSectors = 0
    }

    /// Data and bitmap on stable storage (for overlays outside tmpfs).
    public func sync() throws(BlockError) {
        guard msync(bitmap, mappedLength, MS_SYNC) == 0 else { throw .io(operation: "msync", errno: errno) }
        try FileIO.sync(fd)
    }
}
