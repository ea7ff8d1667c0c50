import BlockDevice
import Synchronization

/// The disk as the guest (and local NBD tools) reach it, whatever stack
/// serves it at the moment: the secondary's view before a failover, the
/// replicated disk after. Every operation passes through a gate, so the
/// stack can be swapped (or held still for a commit) between operations,
/// never under one.
public final class GuestDisk: BlockDevice {
    private let gate = Gate()
    private let current: Mutex<any BlockDevice>
    public let capacity: UInt64

    public init(_ device: any BlockDevice) {
        current = Mutex(device)
        capacity = device.capacity
    }

    /// The stack serving now.
    public var backend: any BlockDevice { current.withLock { $0 } }

    /// Runs `body` with no operation in flight and none starting (e.g. a
    /// failover commit), then serves from what it returns.
    public func swap<E: Error>(_ body: (any BlockDevice) throws(E) -> any BlockDevice) throws(E) {
        try gate.exclusive { () throws(E) in
            let next = try body(backend)
            current.withLock { $0 = next }
        }
    }

    /// Waits until every operation in flight has completed.
    public func drain() {
        gate.exclusive {}
    }

    public var features: BlockFeatures { backend.features }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try gate.shared { () throws(BlockError) in try backend.read(into: buffer, at: offset) }
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try gate.shared { () throws(BlockError) in try backend.write(data, at: offset, fua: fua) }
    }

    public func flush() throws(BlockError) {
        try gate.shared { () throws(BlockError) in try backend.flush() }
    }

    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try gate.shared { () throws(BlockError) in try backend.trim(at: offset, length: length, fua: fua) }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try gate.shared { () throws(BlockError) in try backend.writeZeroes(at: offset, length: length, fua: fua) }
    }

    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent] {
        try gate.shared { () throws(BlockError) in try backend.allocation(at: offset, length: length) }
    }
}
