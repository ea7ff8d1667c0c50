import BlockDevice
import BlockImages
import Glibc

/// Failover on the secondary: the secondary guest's view (active over
/// hidden over secondary disk) becomes the secondary disk itself, crash
/// safely.
///
/// A journal file beside the overlays says how far the commit got:
///
///     (absent)     nothing to do
///     "copying"    active and hidden are being copied down: sectors only
///                  the hidden disk holds first, then the active disk's
///     "emptying"   the secondary disk holds the view (and is synced);
///                  the overlays are being emptied
///
/// Each state is written to a temporary file, synced and renamed into
/// place. Copying never changes the overlays, so it can be redone from
/// the start any number of times with the same result; emptying only
/// starts once the copy is durable. A blockd killed at any point finishes
/// the commit when the disk is opened again (`recover`), so the disk ends
/// up as exactly the view the secondary guest had: nothing it was told
/// was written is lost, and nothing of a later checkpoint leaks in.
public struct FailoverCommit: Sendable {
    public let journalPath: String

    public init(journalPath: String) {
        self.journalPath = journalPath
    }

    enum Phase: String {
        case copying
        case emptying
    }

    /// Commits the overlays of `disk` into its secondary disk.
    public func run(_ disk: SecondaryDisk) throws(BlockError) {
        try disk.locked { () throws(BlockError) in
            try disk.checkApplied()
            try record(.copying)
            try copyDown(disk)
            try record(.emptying)
            try empty(disk)
            try clear()
        }
    }

    /// Finishes a commit a crash interrupted. Returns true if there was one.
    public func recover(_ disk: SecondaryDisk) throws(BlockError) -> Bool {
        guard let phase = try recorded() else { return false }
        try disk.locked { () throws(BlockError) in
            if phase == .copying {
                try copyDown(disk)
                try record(.emptying)
            }
            try empty(disk)
            try clear()
        }
        return true
    }

    /// True while a commit is recorded as unfinished.
    public var isPending: Bool { (try? recorded()) != nil }

    private func copyDown(_ disk: SecondaryDisk) throws(BlockError) {
        let activeRuns = disk.active.allocatedRuns()
        // Hidden sectors the active disk does not shadow.
        for run in disk.hidden.allocatedRuns() {
            for part in disk.active.runs(run) where !part.allocated {
                try copy(part.sectors, from: disk.hidden, to: disk.secondary)
            }
        }
        for run in activeRuns {
            try copy(run, from: disk.active, to: disk.secondary)
        }
        try disk.secondary.flush()
    }

    private func copy(_ sectors: Range<UInt64>, from overlay: OverlayImage, to target: RawImage) throws(BlockError) {
        let sector = OverlayImage.sectorSize
        let chunk: UInt64 = 2048
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk * sector), alignment: 4096)
        defer { buffer.deallocate() }
        var start = sectors.lowerBound
        while start < sectors.upperBound {
            let count = min(chunk, sectors.upperBound - start)
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(count * sector)])
            try overlay.readSectors(into: slice, first: start)
            try target.write(UnsafeRawBufferPointer(slice), at: start * sector, fua: false)
            start += count
        }
    }

    private func empty(_ disk: SecondaryDisk) throws(BlockError) {
        try disk.hidden.empty()
        try disk.active.empty()
    }

    // MARK: Journal

    private func record(_ phase: Phase) throws(BlockError) {
        let temporary = journalPath + ".new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(operation: "open \(temporary)", errno: errno) }
        defer { close(fd) }
        let text = Array((phase.rawValue + "\n").utf8)
        guard write(fd, text, text.count) == text.count else { throw .io(operation: "write \(temporary)", errno: errno) }
        guard fsync(fd) == 0 else { throw .io(operation: "fsync \(temporary)", errno: errno) }
        guard rename(temporary, journalPath) == 0 else { throw .io(operation: "rename \(journalPath)", errno: errno) }
        try syncDirectory()
    }

    private func recorded() throws(BlockError) -> Phase? {
        let fd = open(journalPath, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            guard errno == ENOENT else { throw .io(operation: "open \(journalPath)", errno: errno) }
            return nil
        }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = read(fd, &bytes, bytes.count)
        guard count > 0 else { return .copying }
        let text = String(decoding: bytes[0..<count], as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        // An unreadable journal means the commit may have started: redo it all.
        return Phase(rawValue: text) ?? .copying
    }

    private func clear() throws(BlockError) {
        guard unlink(journalPath) == 0 || errno == ENOENT else {
            throw .io(operation: "unlink \(journalPath)", errno: errno)
        }
        try syncDirectory()
    }

    private func syncDirectory() throws(BlockError) {
        let directory = journalPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = fsync(fd)
    }
}
