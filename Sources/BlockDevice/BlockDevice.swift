/// A disk as every layer of blockd sees it: a raw image, an overlay stack,
/// a replicated disk, the far end of an NBD connection. The NBD server
/// serves any `BlockDevice`, the guest block service serves one to vmmd,
/// and replication composes them, so each layer is tested on its own and
/// stacked without adapters.
///
/// Every method is synchronous and may be called from several threads at
/// once; callers never pass a range beyond `capacity` (the protocol layers
/// check that first and answer with their own errors).
public protocol BlockDevice: AnyObject, Sendable {
    /// Size in bytes.
    var capacity: UInt64 { get }
    var features: BlockFeatures { get }

    /// Fills `buffer` with the bytes at `offset`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError)
    /// Writes `data` at `offset`; with `fua` it is durable before return.
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError)
    /// Makes every completed write durable.
    func flush() throws(BlockError)
    /// The range no longer holds data: it reads as zeros afterwards (every
    /// device of this project guarantees that, so trims replicate exactly).
    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError)
    /// The range reads as zeros afterwards.
    func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError)
    /// Which parts of the range may hold data (`true`) and which certainly
    /// read as zeros (`false`), in order, covering the range exactly. A
    /// device that cannot tell reports the whole range as data.
    func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent]
}

extension BlockDevice {
    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent] {
        [BlockExtent(offset: offset, length: length, hasData: true)]
    }

    /// True when `[offset, offset + length)` lies within the device.
    public func contains(offset: UInt64, length: UInt64) -> Bool {
        offset <= capacity && length <= capacity - offset
    }

    /// Reads into a new array (tests and small reads).
    public func read(at offset: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let outcome = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(BlockError) in try read(into: buffer, at: offset) }
        }
        try outcome.get()
        return bytes
    }

    /// Writes an array (tests and small writes).
    public func write(_ bytes: [UInt8], at offset: UInt64, fua: Bool = false) throws(BlockError) {
        try bytes.withUnsafeBytes { buffer in
            Result { () throws(BlockError) in try write(buffer, at: offset, fua: fua) }
        }.get()
    }
}

/// A device that can put a write in its order as soon as it has the data
/// and apply it afterwards, so whoever is waiting is answered before the
/// apply's I/O. The secondary's disk takes the primary's writes this way:
/// the write is ordered before every later request, checkpoint and
/// failover, and an apply that fails afterwards makes each of those fail.
public protocol EarlyAcknowledgingDevice: BlockDevice {
    /// Writes `data` at `offset` (not durable: FUA writes take the plain
    /// path), calling `acknowledge` once the write is ordered. An error
    /// thrown before `acknowledge` ran means the write did not happen.
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, acknowledge: () -> Void) throws(BlockError)
}

/// What a device supports beyond reads and writes.
public struct BlockFeatures: Sendable, Equatable {
    public var readOnly: Bool
    public var flush: Bool
    public var fua: Bool
    public var trim: Bool
    public var writeZeroes: Bool

    public init(readOnly: Bool = false, flush: Bool = true, fua: Bool = true, trim: Bool = true,
                writeZeroes: Bool = true) {
        self.readOnly = readOnly
        self.flush = flush
        self.fua = fua
        self.trim = trim
        self.writeZeroes = writeZeroes
    }
}

/// A run of bytes with the same allocation state.
public struct BlockExtent: Sendable, Equatable {
    public var offset: UInt64
    public var length: UInt64
    public var hasData: Bool

    public init(offset: UInt64, length: UInt64, hasData: Bool) {
        self.offset = offset
        self.length = length
        self.hasData = hasData
    }
}

/// Why a block operation failed. Each maps onto an NBD error and a
/// virtio-blk status.
public enum BlockError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The system call failed with this errno.
    case io(operation: String, errno: Int32)
    case outOfRange(offset: UInt64, length: UInt64, capacity: UInt64)
    case readOnly
    case unsupported(String)
    /// A remote device's connection is gone.
    case disconnected(String)
    /// The remote device answered with this NBD error number.
    case remote(errno: UInt32, String)
    /// The operation is refused in the device's current state.
    case unavailable(String)

    public var description: String {
        switch self {
        case let .io(operation, errno): return "\(operation): errno \(errno)"
        case let .outOfRange(offset, length, capacity):
            return "range \(offset)+\(length) lies beyond the device's \(capacity) bytes"
        case .readOnly: return "the device is read-only"
        case let .unsupported(what): return "unsupported: \(what)"
        case let .disconnected(detail): return "disconnected: \(detail)"
        case let .remote(errno, detail): return "remote error \(errno): \(detail)"
        case let .unavailable(detail): return "unavailable: \(detail)"
        }
    }
}
