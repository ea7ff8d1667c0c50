import BlockDevice
import Logging
import NBD
import Synchronization

/// The primary's disk: the local image, plus (while there is a partner)
/// the secondary's export over NBD.
///
/// - replicating: each write is sent to the partner first, then written
///   locally, and completes only when both have it; flush and FUA are
///   honoured on both.
/// - mirroring: a resync is copying the disk to a new partner; writes go
///   to the local image and mark their chunks dirty for the mirror.
/// - solo: no partner (never had one, or the link failed: the primary
///   carries on alone and the supervisor decides what follows).
///
/// A gate lets a mode change wait for writes in flight, so every write is
/// either replicated or marked dirty, never lost between modes.
public final class ReplicatedDisk: BlockDevice {
    public let local: any BlockDevice
    let gate = Gate()
    private let logger: Logger

    enum Mode {
        case solo(reason: String)
        case replicating(NBDClient)
        case mirroring(ResyncMirror)
    }
    private let mode: Mutex<Mode>

    public init(local: any BlockDevice, logger: Logger) {
        self.local = local
        self.logger = logger
        mode = Mutex(.solo(reason: "no partner yet"))
    }

    public var capacity: UInt64 { local.capacity }
    public var features: BlockFeatures { local.features }

    /// "solo", "replicating" or "resyncing", for status reports.
    public var state: String {
        switch mode.withLock({ $0 }) {
        case .solo: return "solo"
        case .replicating: return "replicating"
        case .mirroring: return "resyncing"
        }
    }

    /// Why there is no partner, when solo.
    public var soloReason: String? {
        if case .solo(let reason) = mode.withLock({ $0 }) { return reason }
        return nil
    }

    /// Starts replicating to a partner whose disk already equals this one
    /// (both started from the same image).
    public func replicate(to partner: NBDClient) throws(BlockError) {
        try checkPartner(partner)
        gate.exclusive {
            mode.withLock { $0 = .replicating(partner) }
        }
        logger.info("replicating to the partner", metadata: ["event": "replication_started", "export": "\(partner.exportName)"])
    }

    /// Starts copying the disk to a new partner; replication follows by
    /// itself once the copy has converged.
    public func resync(to partner: NBDClient) throws(BlockError) -> ResyncMirror {
        try checkPartner(partner)
        let mirror = ResyncMirror(disk: self, partner: partner, logger: logger)
        try gate.exclusive { () throws(BlockError) in
            if case .mirroring = mode.withLock({ $0 }) { throw .unavailable("a resync is already running") }
            mode.withLock { $0 = .mirroring(mirror) }
        }
        mirror.start()
        return mirror
    }

    /// The running or last resync, if the disk is mirroring now.
    public var mirror: ResyncMirror? {
        if case .mirroring(let mirror) = mode.withLock({ $0 }) { return mirror }
        return nil
    }

    /// Waits until every write in flight has completed on both sides (the
    /// primary's half of a checkpoint).
    public func drain() {
        gate.exclusive {}
    }

    /// Drops the partner (the peer failed or is being replaced). The
    /// connection is cut first: writes waiting on a silent partner then
    /// fail over to local-only at once instead of holding the gate until
    /// the request timeout.
    public func detach(reason: String) {
        switch mode.withLock({ $0 }) {
        case .replicating(let partner): partner.disconnect()
        case .mirroring(let mirror): mirror.partner.disconnect()
        case .solo: break
        }
        gate.exclusive { enterSolo(reason) }
    }

    private func checkPartner(_ partner: NBDClient) throws(BlockError) {
        guard partner.capacity == capacity else {
            throw .unsupported("the partner's export has \(partner.capacity) bytes, the disk \(capacity)")
        }
        guard !partner.features.readOnly else { throw .unsupported("the partner's export is read-only") }
    }

    private func enterSolo(_ reason: String) {
        let previous = mode.withLock { mode -> Mode in
            defer { mode = .solo(reason: reason) }
            return mode
        }
        switch previous {
        case .replicating(let partner): partner.disconnect()
        case .mirroring(let mirror): mirror.partner.disconnect()
        case .solo: return
        }
        logger.warning("replication stopped: \(reason)", metadata: ["event": "replication_lost", "reason": "\(reason)"])
    }

    /// Called (inside the gate) when the partner failed a request.
    private func partnerFailed(_ partner: NBDClient, _ error: BlockError) {
        let current = mode.withLock { mode -> Bool in
            if case .replicating(let active) = mode { return active === partner }
            return false
        }
        if current { enterSolo("the partner failed: \(error)") }
    }

    /// Called by the mirror, with the gate held exclusively, once the
    /// partner has everything.
    func mirrorConverged(_ mirror: ResyncMirror) {
        mode.withLock { $0 = .replicating(mirror.partner) }
    }

    /// Called by the mirror when the copy failed.
    func mirrorFailed(_ mirror: ResyncMirror, _ reason: String) {
        gate.exclusive {
            let current = mode.withLock { mode -> Bool in
                if case .mirroring(let active) = mode { return active === mirror }
                return false
            }
            if current { enterSolo("resync failed: \(reason)") }
        }
    }

    // MARK: BlockDevice

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try local.read(into: buffer, at: offset)
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try replicated(offset: offset, length: UInt64(data.count)) { partner throws(BlockError) in
            try partner.submit(.write, offset: offset, length: UInt32(data.count),
                               flags: fua ? NBDCommandFlag.fua : 0, payload: data)
        } local: { () throws(BlockError) in
            try local.write(data, at: offset, fua: fua)
        }
    }

    public func flush() throws(BlockError) {
        try replicated(offset: 0, length: 0) { partner throws(BlockError) in
            try partner.submit(.flush)
        } local: { () throws(BlockError) in
            try local.flush()
        }
    }

    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try writeZeroes(at: offset, length: length, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        guard length <= UInt64(UInt32.max) else {
            // Wider than one NBD request: split.
            var done: UInt64 = 0
            while done < length {
                let step = min(length - done, 1 << 30)
                try writeZeroes(at: offset + done, length: step, fua: fua)
                done += step
            }
            return
        }
        try replicated(offset: offset, length: length) { partner throws(BlockError) in
            try partner.submit(.writeZeroes, offset: offset, length: UInt32(length), flags: fua ? NBDCommandFlag.fua : 0)
        } local: { () throws(BlockError) in
            try local.writeZeroes(at: offset, length: length, fua: fua)
        }
    }

    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent] {
        try local.allocation(at: offset, length: length)
    }

    /// One guest write in the current mode: sent to the partner before the
    /// local write starts (they proceed in parallel), completed when both
    /// are done. A local failure fails the write; a partner failure drops
    /// the partner (the write stands locally).
    private func replicated(offset: UInt64, length: UInt64,
                            remote: (NBDClient) throws(BlockError) -> NBDPendingRequest,
                            local write: () throws(BlockError) -> Void) throws(BlockError) {
        guard !local.features.readOnly else { throw .readOnly }
        guard contains(offset: offset, length: length) else {
            throw .outOfRange(offset: offset, length: length, capacity: capacity)
        }
        try gate.shared { () throws(BlockError) in
            switch mode.withLock({ $0 }) {
            case .solo:
                try write()
            case .mirroring(let mirror):
                try write()
                mirror.markDirty(offset: offset, length: length)
            case .replicating(let partner):
                var pending: NBDPendingRequest?
                do throws(BlockError) {
                    pending = try remote(partner)
                } catch {
                    partnerFailed(partner, error)
                }
                let localResult = Result { () throws(BlockError) in try write() }
                if let pending {
                    do throws(BlockError) {
                        try partner.wait(pending)
                    } catch {
                        partnerFailed(partner, error)
                    }
                }
                try localResult.get()
            }
        }
    }
}
