import BlockDevice
import ControlSocket
import Glibc
import Logging
import NBD
import Synchronization

/// Copies a running disk to a new partner, then hands over to replication.
///
/// 1. Copy: every allocated extent of the local image is written to the
///    partner and every hole zeroed there, in order, while the guest keeps
///    writing; each guest write marks its 64 KiB chunks dirty.
/// 2. Converge: dirty chunks are copied again (clearing their bits first,
///    so a write racing the copy marks them once more) until little is
///    left or enough passes ran.
/// 3. Switch: guest writes are held (only those in flight complete), the
///    last dirty chunks are copied, the partner is flushed, and the disk
///    replicates from the next write on. The pause covers only that last
///    copy, and is reported.
public final class ResyncMirror: Sendable {
    public static let chunkSize: UInt64 = 64 * 1024
    /// Dirty bytes small enough to copy with the guest's writes held.
    public static let switchThreshold: UInt64 = 4 << 20
    public static let maxConvergePasses = 16

    public enum Phase: String, Sendable {
        case copying, converging, replicating, failed
    }

    public struct Progress: Sendable {
        public var phase: Phase = .copying
        /// Bytes of the first full pass done, and its total (the capacity).
        public var scannedBytes: UInt64 = 0
        public var capacityBytes: UInt64 = 0
        /// Bytes written to the partner so far (data and re-copies; holes
        /// are zeroed, not counted).
        public var copiedBytes: UInt64 = 0
        /// Bytes dirtied by the guest and not yet copied again.
        public var dirtyBytes: UInt64 = 0
        public var passes = 0
        /// How long guest writes were held for the switch.
        public var switchPauseMicroseconds: UInt64 = 0
        public var error: String?
    }

    private struct DirtyMap {
        var words: [UInt64]
        var count: UInt64 = 0
    }

    let partner: NBDClient
    private unowned(unsafe) let disk: ReplicatedDisk
    private let logger: Logger
    private let dirty: Mutex<DirtyMap>
    private let state: Mutex<Progress>

    init(disk: ReplicatedDisk, partner: NBDClient, logger: Logger) {
        self.disk = disk
        self.partner = partner
        self.logger = logger
        let chunks = (disk.capacity + Self.chunkSize - 1) / Self.chunkSize
        dirty = Mutex(DirtyMap(words: [UInt64](repeating: 0, count: Int((chunks + 63) / 64))))
        var progress = Progress()
        progress.capacityBytes = disk.capacity
        state = Mutex(progress)
    }

    public var progress: Progress {
        var snapshot = state.withLock { $0 }
        snapshot.dirtyBytes = dirty.withLock { $0.count } * Self.chunkSize
        return snapshot
    }

    func start() {
        let disk = self.disk
        spawnThread(name: "resync") { [self] in
            logger.info("resync started", metadata: ["event": "resync_started", "capacity": "\(disk.capacity)"])
            do throws(BlockError) {
                try copyEverything()
                try converge()
                try switchOver()
            } catch {
                state.withLock {
                    $0.phase = .failed
                    $0.error = "\(error)"
                }
                logger.error("resync failed: \(error)", metadata: ["event": "resync_failed", "reason": "\(error)"])
                disk.mirrorFailed(self, "\(error)")
            }
        }
    }

    /// Called by the disk for each guest write while mirroring.
    func markDirty(offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        let first = offset / Self.chunkSize
        let last = (offset + length - 1) / Self.chunkSize
        dirty.withLock { map in
            for chunk in first...last {
                let bit: UInt64 = 1 << (chunk % 64)
                if map.words[Int(chunk / 64)] & bit == 0 {
                    map.words[Int(chunk / 64)] |= bit
                    map.count += 1
                }
            }
        }
    }

    private func takeDirty() -> [UInt64] {
        dirty.withLock { map in
            var chunks: [UInt64] = []
            chunks.reserveCapacity(Int(map.count))
            for index in map.words.indices where map.words[index] != 0 {
                var word = map.words[index]
                while word != 0 {
                    chunks.append(UInt64(index) * 64 + UInt64(word.trailingZeroBitCount))
                    word &= word - 1
                }
                map.words[index] = 0
            }
            map.count = 0
            return chunks
        }
    }

    private func copyEverything() throws(BlockError) {
        let step: UInt64 = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(step), alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < disk.capacity {
            let length = min(step, disk.capacity - offset)
            for extent in try disk.local.allocation(at: offset, length: length) {
                if extent.hasData {
                    try copy(extent.offset, extent.length, buffer)
                } else {
                    try zero(extent.offset, extent.length, buffer)
                }
            }
            offset += length
            state.withLock { $0.scannedBytes = offset }
        }
        state.withLock { $0.passes = 1 }
    }

    private func converge() throws(BlockError) {
        state.withLock { $0.phase = .converging }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(Self.chunkSize), alignment: 4096)
        defer { buffer.deallocate() }
        var passes = 0
        while dirty.withLock({ $0.count }) * Self.chunkSize > Self.switchThreshold && passes < Self.maxConvergePasses {
            try copyChunks(takeDirty(), buffer)
            passes += 1
            state.withLock { $0.passes += 1 }
        }
    }

    private func switchOver() throws(BlockError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(Self.chunkSize), alignment: 4096)
        defer { buffer.deallocate() }
        let started = ContinuousClock.now
        try disk.gate.exclusive { () throws(BlockError) in
            try copyChunks(takeDirty(), buffer)
            try partner.flush()
            disk.mirrorConverged(self)
        }
        let pause = ContinuousClock.now - started
        let microseconds = UInt64(pause.components.seconds) * 1_000_000 + UInt64(pause.components.attoseconds / 1_000_000_000_000)
        state.withLock {
            $0.phase = .replicating
            $0.switchPauseMicroseconds = microseconds
        }
        logger.info("resync done, replicating", metadata: [
            "event": "resync_converged", "pause_us": "\(microseconds)", "copied": "\(progress.copiedBytes)",
        ])
    }

    private func copyChunks(_ chunks: [UInt64], _ buffer: UnsafeMutableRawBufferPointer) throws(BlockError) {
        for chunk in chunks {
            let offset = chunk * Self.chunkSize
            try copy(offset, min(Self.chunkSize, disk.capacity - offset), buffer)
        }
    }

    private func copy(_ offset: UInt64, _ length: UInt64, _ buffer: UnsafeMutableRawBufferPointer) throws(BlockError) {
        var done: UInt64 = 0
        while done < length {
            let count = Int(min(UInt64(buffer.count), length - done))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            try disk.local.read(into: slice, at: offset + done)
            try partner.write(UnsafeRawBufferPointer(slice), at: offset + done, fua: false)
            done += UInt64(count)
        }
        state.withLock { $0.copiedBytes += length }
    }

    private func zero(_ offset: UInt64, _ length: UInt64, _ buffer: UnsafeMutableRawBufferPointer) throws(BlockError) {
        if partner.features.writeZeroes {
            return try partner.writeZeroes(at: offset, length: length, fua: false)
        }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let count = Int(min(UInt64(buffer.count), length - done))
            try partner.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]), at: offset + done, fua: false)
            done += UInt64(count)
        }
    }
}
