import GuestMemory

/// A buffer the driver offered: a descriptor's address and length, checked
/// to lie inside guest RAM.
public struct GuestSegment: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32

    public init(address: UInt64, length: UInt32) {
        self.address = address
        self.length = length
    }
}

/// One request: the driver's chain of descriptors, device-readable ones
/// first, then device-writable ones.
public struct DescriptorChain: Sendable, Equatable {
    public var head: UInt16
    public var readable: [GuestSegment]
    public var writable: [GuestSegment]

    public var readableLength: Int { readable.reduce(0) { $0 + Int($1.length) } }
    public var writableLength: Int { writable.reduce(0) { $0 + Int($1.length) } }
}

/// How a driver broke the virtqueue rules; the device then stops using the
/// queue and asks for a reset (virtio 1.x section 2.1.2, DEVICE_NEEDS_RESET).
public enum VirtqueueError: Error, Sendable, Equatable, CustomStringConvertible {
    case ringOutsideRAM(UInt64)
    case availableIndexJump(from: UInt16, to: UInt16, size: UInt16)
    case headOutOfRange(UInt16)
    case nextOutOfRange(UInt16)
    case chainTooLong(head: UInt16)
    case indirectNotNegotiated(head: UInt16)
    case readableAfterWritable(head: UInt16)
    case bufferOutsideRAM(address: UInt64, length: UInt32)

    public var description: String {
        switch self {
        case let .ringOutsideRAM(address): return "virtqueue rings at 0x\(String(address, radix: 16)) lie outside RAM"
        case let .availableIndexJump(from, to, size):
            return "available index jumped from \(from) to \(to) (queue size \(size))"
        case let .headOutOfRange(index): return "available ring names descriptor \(index), beyond the table"
        case let .nextOutOfRange(index): return "a descriptor chains to \(index), beyond the table"
        case let .chainTooLong(head): return "the chain from descriptor \(head) is longer than the queue (a loop)"
        case let .indirectNotNegotiated(head): return "the chain from descriptor \(head) uses indirect descriptors, which were not offered"
        case let .readableAfterWritable(head): return "the chain from descriptor \(head) has a device-readable buffer after a writable one"
        case let .bufferOutsideRAM(address, length):
            return "a buffer at 0x\(String(address, radix: 16)) of \(length) bytes lies outside RAM"
        }
    }
}

/// A split virtqueue in the legacy layout (virtio 0.9.5: descriptor table,
/// available ring, then the used ring on the next 4 KiB boundary, all at
/// the page the driver wrote to QUEUE_PFN). The state is plain data; guest
/// RAM is passed in for every operation.
public struct Virtqueue: Sendable, Equatable {
    public static let alignment: UInt64 = 4096
    static let descriptorNext: UInt16 = 1, descriptorWrite: UInt16 = 2, descriptorIndirect: UInt16 = 4
    static let availableNoInterrupt: UInt16 = 1

    /// The queue size the device offers (a power of two).
    public let size: UInt16
    /// The guest page holding the rings; 0 while the queue is not set up.
    public var pageFrame: UInt32 = 0
    /// The next available-ring entry to take.
    public var nextAvailable: UInt16 = 0
    /// The next used-ring entry to fill (and the used index published).
    public var nextUsed: UInt16 = 0

    public init(size: UInt16) {
        precondition(size > 0 && size & (size - 1) == 0 && size <= 32768)
        self.size = size
    }

    public var isReady: Bool { pageFrame != 0 }

    var descriptorTable: UInt64 { UInt64(pageFrame) << 12 }
    var availableRing: UInt64 { descriptorTable + 16 * UInt64(size) }
    var usedRing: UInt64 {
        (availableRing + 6 + 2 * UInt64(size) + Self.alignment - 1) & ~(Self.alignment - 1)
    }
    var ringsEnd: UInt64 { usedRing + 6 + 8 * UInt64(size) }

    /// Checks that the rings lie inside RAM (when the driver sets the PFN).
    public func validate(memory: GuestMemory) throws(VirtqueueError) {
        guard memory.memfdOffset(of: descriptorTable, length: ringsEnd - descriptorTable) != nil else {
            throw .ringOutsideRAM(descriptorTable)
        }
    }

    /// Takes the next chain the driver made available, or nil when none is.
    public mutating func pop(memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain? {
        do {
            let available = try memory.loadAcquireUInt16(at: availableRing + 2)
            let outstanding = available &- nextAvailable
            guard outstanding != 0 else { return nil }
            guard outstanding <= size else {
                throw VirtqueueError.availableIndexJump(from: nextAvailable, to: available, size: size)
            }
            let slot = availableRing + 4 + 2 * UInt64(nextAvailable % size)
            let head = try memory.load(UInt16.self, at: slot)
            guard head < size else { throw VirtqueueError.headOutOfRange(head) }
            let chain = try walk(from: head, memory: memory)
            nextAvailable &+= 1
            return chain
        } catch let error as VirtqueueError {
            throw error
        } catch {
            throw .ringOutsideRAM(descriptorTable)
        }
    }

    /// Puts the last popped chain back (the device could not use it yet).
    public mutating func undoPop() {
        nextAvailable &-= 1
    }

    /// True when the driver has made chains available that were not taken.
    public func hasAvailable(memory: GuestMemory) -> Bool {
        guard isReady, let available = try? memory.loadAcquireUInt16(at: availableRing + 2) else { return false }
        return available != nextAvailable
    }

    private func walk(from head: UInt16, memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain {
        var chain = DescriptorChain(head: head, readable: [], writable: [])
        var index = head
        var visited = 0
        while true {
            visited += 1
            guard visited <= Int(size) else { throw .chainTooLong(head: head) }
            let entry = descriptorTable + 16 * UInt64(index)
            let address: UInt64, length: UInt32, flags: UInt16, next: UInt16
            do {
                address = try memory.load(UInt64.self, at: entry)
                length = try memory.load(UInt32.self, at: entry + 8)
                flags = try memory.load(UInt16.self, at: entry + 12)
                next = try memory.load(UInt16.self, at: entry + 14)
            } catch {
                throw .ringOutsideRAM(descriptorTable)
            }
            guard flags & Self.descriptorIndirect == 0 else { throw .indirectNotNegotiated(head: head) }
            guard memory.memfdOffset(of: address, length: UInt64(length)) != nil else {
                throw .bufferOutsideRAM(address: address, length: length)
            }
            if length > 0 {
                let segment = GuestSegment(address: address, length: length)
                if flags & Self.descriptorWrite != 0 {
                    chain.writable.append(segment)
                } else {
                    guard chain.writable.isEmpty else { throw .readableAfterWritable(head: head) }
                    chain.readable.append(segment)
                }
            }
            guard flags & Self.descriptorNext != 0 else { return chain }
            guard next < size else { throw .nextOutOfRange(next) }
            index = next
        }
    }

    /// Returns a chain to the driver with `length` bytes written into it.
    public mutating func push(head: UInt16, length: UInt32, memory: GuestMemory) throws(VirtqueueError) {
        let element = usedRing + 4 + 8 * UInt64(nextUsed % size)
        do {
            try memory.store(UInt32(head), at: element)
            try memory.store(length, at: element + 4)
            nextUsed &+= 1
            try memory.storeReleaseUInt16(nextUsed, at: usedRing + 2)
        } catch {
            throw .ringOutsideRAM(descriptorTable)
        }
    }

    /// False when the driver asked not to be interrupted for this queue
    /// (VRING_AVAIL_F_NO_INTERRUPT).
    public func driverWantsInterrupt(memory: GuestMemory) -> Bool {
        memory.fence()
        guard let flags = try? memory.load(UInt16.self, at: availableRing) else { return true }
        return flags & Self.availableNoInterrupt == 0
    }
}
