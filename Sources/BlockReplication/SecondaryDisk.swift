import BlockDevice
import BlockImages
import ControlSocket

/// The secondary's disk stack (DESIGN.md section 6):
///
///     secondary guest ──► active ─► hidden ─► secondary disk ◄── primary's writes
///
/// The primary's writes (arriving over NBD) go to the secondary disk, after
/// copy-before-write of the sectors they overwrite into the hidden disk
/// (unless the active disk already shadows them), so the secondary guest
/// keeps seeing the disk of the last checkpoint plus its own writes, which
/// go to the active disk. A checkpoint empties active and hidden: the
/// secondary guest then sees exactly the primary's disk.
///
/// One lock orders the primary's writes against the guest's reads and
/// writes: a guest read never sees a half-done copy-before-write.
public final class SecondaryDisk: Sendable {
    public let secondary: RawImage
    public let active: OverlayImage
    public let hidden: OverlayImage
    let lock = ThreadLock()
    /// Set at failover: the old primary's writes are refused from then on.
    private nonisolated(unsafe) var fenced = false
    /// Set (under the lock) when an early-acknowledged write failed.
    nonisolated(unsafe) var applyFailure: BlockError?
    static let sector = OverlayImage.sectorSize
    /// The most copy-before-write moves at once.
    static let copyChunk: UInt64 = 1 << 20
    /// Below this, reading old data costs less than asking where the holes are.
    static let lookupThreshold: UInt64 = 64 << 10
    /// Copy-before-write's buffer (used under the lock).
    private nonisolated(unsafe) let copyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(copyChunk), alignment: 4096)

    /// What the primary's NBD link writes to.
    public var primaryWrites: any BlockDevice { PrimaryWriteDevice(disk: self) }
    /// What the secondary guest sees and writes.
    public var guestView: any BlockDevice { SecondaryGuestView(disk: self) }

    public init(secondary: RawImage, active: OverlayImage, hidden: OverlayImage) throws(BlockError) {
        guard secondary.capacity % Self.sector == 0 else {
            throw .unsupported("the secondary disk's size \(secondary.capacity) is not a multiple of 512")
        }
        guard active.capacity == secondary.capacity, hidden.capacity == secondary.capacity else {
            throw .unsupported("active and hidden overlays must match the secondary disk's size")
        }
        self.secondary = secondary
        self.active = active
        self.hidden = hidden
    }

    deinit {
        copyBuffer.deallocate()
    }

    /// Runs `body` with the stack to itself.
    func locked<T>(_ body: () throws(BlockError) -> T) throws(BlockError) -> T {
        try lock.withLock { () throws(BlockError) in try body() }
    }

    /// Refuses every later write from the primary (failover has begun:
    /// the old primary must not change the disk being committed).
    public func fence() {
        lock.withLock { fenced = true }
    }

    func checkNotFenced() throws(BlockError) {
        if fenced { throw .unavailable("this disk failed over: the primary's writes are refused") }
        try checkApplied()
    }

    /// Fails once a primary's write was acknowledged and then could not be
    /// applied: this disk no longer holds what the primary's guest saw
    /// written, so it must not take checkpoints, writes or a failover.
    func checkApplied() throws(BlockError) {
        if let applyFailure {
            throw .unavailable("a write acknowledged to the primary failed here (\(applyFailure)): resync needed")
        }
    }

    /// Empties active and hidden: the secondary guest's view becomes the
    /// secondary disk, which holds everything the primary wrote. Waits for
    /// operations in progress.
    public func checkpoint() throws(BlockError) {
        try locked { () throws(BlockError) in
            try checkNotFenced()
            try hidden.empty()
            try active.empty()
        }
    }

    /// Bytes held by the active and hidden disks.
    public var overlayBytes: (active: UInt64, hidden: UInt64) {
        lock.withLock { (active.allocatedSectors * Self.sector, hidden.allocatedSectors * Self.sector) }
    }

    // MARK: Layered sectors (callers hold the lock)

    /// Reads whole sectors as the secondary guest sees them.
    func readView(into buffer: UnsafeMutableRawBufferPointer, first: UInt64) throws(BlockError) {
        let count = UInt64(buffer.count) / Self.sector
        for run in active.runs(first..<(first + count)) {
            let slice = sectorSlice(buffer, first: first, run.sectors)
            if run.allocated {
                try active.readSectors(into: slice, first: run.sectors.lowerBound)
                continue
            }
            for lower in hidden.runs(run.sectors) {
                let part = sectorSlice(buffer, first: first, lower.sectors)
                if lower.allocated {
                    try hidden.readSectors(into: part, first: lower.sectors.lowerBound)
                } else {
                    try secondary.read(into: part, at: lower.sectors.lowerBound * Self.sector)
                }
            }
        }
    }

    /// Preserves the checkpoint's contents of `sectors` in the hidden disk
    /// before the primary overwrites them, where neither active nor hidden
    /// already holds them.
    func copyBeforeWrite(_ sectors: Range<UInt64>) throws(BlockError) {
        let chunk = Self.copyChunk / Self.sector
        for run in hidden.runs(sectors) where !run.allocated {
            for unshadowed in active.runs(run.sectors) where !unshadowed.allocated {
                var start = unshadowed.sectors.lowerBound
                while start < unshadowed.sectors.upperBound {
                    let end = min(start + chunk, unshadowed.sectors.upperBound)
                    try preserve(start..<end)
                    start = end
                }
            }
        }
    }

    /// Copies the secondary disk's `sectors` (at most `copyChunk`) into
    /// the hidden disk. Small copies just read the old data (no allocation
    /// lookup: a hole reads as zeros from the page cache); large ones skip
    /// the holes the file system reports. Zeros cost the hidden disk no
    /// I/O (`OverlayImage.zeroSectors`).
    private func preserve(_ sectors: Range<UInt64>) throws(BlockError) {
        let offset = sectors.lowerBound * Self.sector
        let length = UInt64(sectors.count) * Self.sector
        let extents = length <= Self.lookupThreshold
            ? [BlockExtent(offset: offset, length: length, hasData: true)]
            : try secondary.allocation(at: offset, length: length)
        for extent in extents {
            let first = extent.offset / Self.sector
            let range = first..<(first + extent.length / Self.sector)
            guard extent.hasData else {
                try hidden.zeroSectors(range)
                continue
            }
            let buffer = UnsafeMutableRawBufferPointer(rebasing: copyBuffer[..<Int(extent.length)])
            try secondary.read(into: buffer, at: extent.offset)
            if Self.isZero(UnsafeRawBufferPointer(buffer)) {
                try hidden.zeroSectors(range)
            } else {
                try hidden.writeSectors(UnsafeRawBufferPointer(buffer), first: range.lowerBound)
            }
        }
    }

    private static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let words = bytes.count / 8
        let base = bytes.baseAddress!
        for index in 0..<words where base.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) != 0 { return false }
        for index in (words * 8)..<bytes.count where bytes[index] != 0 { return false }
        return true
    }

    private func sectorSlice(_ buffer: UnsafeMutableRawBufferPointer, first: UInt64, _ sectors: Range<UInt64>)
        -> UnsafeMutableRawBufferPointer {
        let start = Int((sectors.lowerBound - first) * Self.sector)
        return UnsafeMutableRawBufferPointer(rebasing: buffer[start..<(start + sectors.count * Int(Self.sector))])
    }

    /// The sectors covering a byte range.
    static func sectors(offset: UInt64, length: UInt64) -> Range<UInt64> {
        (offset / sector)..<((offset + length + sector - 1) / sector)
    }
}

/// The export the primary writes through (its NBD link lands here).
/// Plain writes are acknowledged once they are ordered under the disk's
/// lock, before the copy-before-write and the write itself: the primary
/// waits for a network round trip, not for the secondary's I/O.
final class PrimaryWriteDevice: EarlyAcknowledgingDevice {
    let disk: SecondaryDisk
    init(disk: SecondaryDisk) { self.disk = disk }

    var capacity: UInt64 { disk.secondary.capacity }
    var features: BlockFeatures { BlockFeatures() }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try disk.locked { () throws(BlockError) in try disk.secondary.read(into: buffer, at: offset) }
    }

    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try checkRange(offset, UInt64(data.count))
        try disk.locked { () throws(BlockError) in
            try disk.checkNotFenced()
            try disk.copyBeforeWrite(SecondaryDisk.sectors(offset: offset, length: UInt64(data.count)))
            try disk.secondary.write(data, at: offset, fua: fua)
        }
    }

    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, acknowledge: () -> Void) throws(BlockError) {
        try checkRange(offset, UInt64(data.count))
        try disk.locked { () throws(BlockError) in
            try disk.checkNotFenced()
            acknowledge()
            do throws(BlockError) {
                try disk.copyBeforeWrite(SecondaryDisk.sectors(offset: offset, length: UInt64(data.count)))
                try disk.secondary.write(data, at: offset, fua: false)
            } catch {
                disk.applyFailure = error
                throw error
            }
        }
    }

    func flush() throws(BlockError) {
        try disk.locked { () throws(BlockError) in try disk.checkApplied() }
        try disk.secondary.flush()
    }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try writeZeroes(at: offset, length: length, fua: fua)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try checkRange(offset, length)
        try disk.locked { () throws(BlockError) in
            try disk.checkNotFenced()
            try disk.copyBeforeWrite(SecondaryDisk.sectors(offset: offset, length: length))
            try disk.secondary.writeZeroes(at: offset, length: length, fua: fua)
        }
    }

    func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent] {
        try disk.secondary.allocation(at: offset, length: length)
    }

    private func checkRange(_ offset: UInt64, _ length: UInt64) throws(BlockError) {
        guard contains(offset: offset, length: length) else {
            throw .outOfRange(offset: offset, length: length, capacity: capacity)
        }
    }
}

/// The secondary guest's disk: reads active, else hidden, else the
/// secondary disk; writes go to the active disk.
final class SecondaryGuestView: BlockDevice {
    let disk: SecondaryDisk
    init(disk: SecondaryDisk) { self.disk = disk }

    var capacity: UInt64 { disk.secondary.capacity }
    var features: BlockFeatures { BlockFeatures() }
    private var sector: UInt64 { SecondaryDisk.sector }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try checkRange(offset, UInt64(buffer.count))
        try disk.locked { () throws(BlockError) in
            if offset % sector == 0 && UInt64(buffer.count) % sector == 0 {
                return try disk.readView(into: buffer, first: offset / sector)
            }
            let sectors = SecondaryDisk.sectors(offset: offset, length: UInt64(buffer.count))
            let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: sectors.count * Int(sector), alignment: 4096)
            defer { bounce.deallocate() }
            try disk.readView(into: bounce, first: sectors.lowerBound)
            let skip = Int(offset - sectors.lowerBound * sector)
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bounce[skip..<(skip + buffer.count)]))
        }
    }

    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try checkRange(offset, UInt64(data.count))
        try disk.locked { () throws(BlockError) in
            if offset % sector == 0 && UInt64(data.count) % sector == 0 {
                try disk.active.writeSectors(data, first: offset / sector)
            } else {
                try patch(offset: offset, length: UInt64(data.count)) { $0.copyMemory(from: data) }
            }
            if fua { try disk.active.sync() }
        }
    }

    func flush() throws(BlockError) {
        try disk.locked { () throws(BlockError) in try disk.active.sync() }
    }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try writeZeroes(at: offset, length: length, fua: fua)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try checkRange(offset, length)
        try disk.locked { () throws(BlockError) in
            let end = offset + length
            let firstWhole = (offset + sector - 1) / sector
            let endWhole = end / sector
            if firstWhole < endWhole {
                try disk.active.zeroSectors(firstWhole..<endWhole)
                if offset < firstWhole * sector {
                    try patch(offset: offset, length: firstWhole * sector - offset) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
                }
                if end > endWhole * sector {
                    try patch(offset: endWhole * sector, length: end - endWhole * sector) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
                }
            } else {
                try patch(offset: offset, length: length) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
            }
            if fua { try disk.active.sync() }
        }
    }

    /// Read-modify-write of the sectors around a partial-sector change.
    private func patch(offset: UInt64, length: UInt64, _ change: (UnsafeMutableRawBufferPointer) -> Void)
        throws(BlockError) {
        let sectors = SecondaryDisk.sectors(offset: offset, length: length)
        let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: sectors.count * Int(sector), alignment: 4096)
        defer { bounce.deallocate() }
        try disk.readView(into: bounce, first: sectors.lowerBound)
        let skip = Int(offset - sectors.lowerBound * sector)
        change(UnsafeMutableRawBufferPointer(rebasing: bounce[skip..<(skip + Int(length))]))
        try disk.active.writeSectors(UnsafeRawBufferPointer(bounce), first: sectors.lowerBound)
    }

    private func checkRange(_ offset: UInt64, _ length: UInt64) throws(BlockError) {
        guard contains(offset: offset, length: length) else {
            throw .outOfRange(offset: offset, length: length, capacity: capacity)
        }
    }
}
