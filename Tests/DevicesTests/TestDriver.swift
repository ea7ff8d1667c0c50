import ControlSocket
import Devices
import GuestMemory
import SystemPackage

/// Records what device models do to their interrupt line.
final class RecordingLine: InterruptLine, @unchecked Sendable {
    private let lock = ThreadLock()
    private var levels: [Bool] = []

    func set(high: Bool) { lock.withLock { levels.append(high) } }

    var history: [Bool] { lock.withLock { levels } }
    var isHigh: Bool { history.last ?? false }
}

/// A guest-side driver of one legacy virtio device, written the way the
/// test guest's driver works, with knobs to break the rules.
struct TestDriver {
    let memory: GuestMemory
    let transport: VirtioPciTransport
    let base: UInt16 = 0xC000
    var queues: [UInt16: (pfn: UInt32, size: UInt16, nextDescriptor: UInt16, availableIndex: UInt16)] = [:]

    /// Sets a transport up with I/O decode on and the driver at DRIVER_OK.
    init(model: any VirtioDeviceModel, memory: GuestMemory, ports: PortBus, line: RecordingLine,
         failures: @escaping @Sendable (String) -> Void = { _ in }) {
        self.memory = memory
        transport = VirtioPciTransport(model: model, memory: memory, ports: ports, ioBase: 0xC000, irq: 10,
                                       interrupt: line, registrar: nil, onFailure: failures, wakeDeviceThread: {})
        transport.configWrite(offset: 0x04, size: 2, value: 0x5)          // I/O space, bus master
        transport.write(offset: 0x12, size: 1, value: 1)
        transport.write(offset: 0x12, size: 1, value: 3)
    }

    func ready() { transport.write(offset: 0x12, size: 1, value: 7) }

    /// Places queue `index` (its size as the device offers it) at `pfn`.
    mutating func setUpQueue(_ index: UInt16, pfn: UInt32) {
        transport.write(offset: 0x0E, size: 2, value: UInt32(index))
        let size = UInt16(transport.read(offset: 0x0C, size: 2))
        transport.write(offset: 0x08, size: 4, value: pfn)
        queues[index] = (pfn, size, 0, 0)
    }

    /// Writes a chain (buffers with writable flags) and makes it available;
    /// returns its head. `chainTo` overrides the last descriptor's next.
    @discardableResult
    mutating func offer(_ index: UInt16, _ buffers: [(address: UInt64, length: UInt32, writable: Bool)],
                        flags extra: UInt16 = 0, loopBack: Bool = false, notify: Bool = true) throws -> UInt16 {
        var queue = queues[index]!
        let table = UInt64(queue.pfn) << 12
        let head = queue.nextDescriptor
        for (position, buffer) in buffers.enumerated() {
            let descriptor = (head + UInt16(position)) % queue.size
            let entry = table + 16 * UInt64(descriptor)
            let last = position == buffers.count - 1
            var flags: UInt16 = buffer.writable ? 2 : 0
            if !last || loopBack { flags |= 1 }
            try memory.store(buffer.address, at: entry)
            try memory.store(buffer.length, at: entry + 8)
            try memory.store(flags | extra, at: entry + 12)
            try memory.store(last && loopBack ? head : (descriptor + 1) % queue.size, at: entry + 14)
        }
        queue.nextDescriptor = (head + UInt16(buffers.count)) % queue.size
        let available = table + 16 * UInt64(queue.size)
        try memory.store(head, at: available + 4 + 2 * UInt64(queue.availableIndex % queue.size))
        queue.availableIndex &+= 1
        try memory.store(queue.availableIndex, at: available + 2)
        queues[index] = queue
        if notify { transport.write(offset: 0x10, size: 2, value: UInt32(index)) }
        return head
    }

    /// Makes the available index jump by `count` without entries.
    mutating func corruptAvailableIndex(_ index: UInt16, by count: UInt16) throws {
        var queue = queues[index]!
        let available = (UInt64(queue.pfn) << 12) + 16 * UInt64(queue.size)
        queue.availableIndex &+= count
        try memory.store(queue.availableIndex, at: available + 2)
        queues[index] = queue
        transport.write(offset: 0x10, size: 2, value: UInt32(index))
    }

    /// The used ring's index and its entries so far.
    func used(_ index: UInt16) throws -> (index: UInt16, entries: [(id: UInt32, length: UInt32)]) {
        let queue = queues[index]!
        let table = UInt64(queue.pfn) << 12
        let usedRing = (table + 16 * UInt64(queue.size) + 6 + 2 * UInt64(queue.size) + 4095) & ~4095
        let count = try memory.load(UInt16.self, at: usedRing + 2)
        var entries: [(UInt32, UInt32)] = []
        for slot in 0..<UInt64(count) {
            entries.append((try memory.load(UInt32.self, at: usedRing + 4 + 8 * slot),
                            try memory.load(UInt32.self, at: usedRing + 8 + 8 * slot)))
        }
        return (count, entries)
    }

    var status: UInt8 { UInt8(transport.read(offset: 0x12, size: 1)) }
    func readISR() -> UInt8 { UInt8(transport.read(offset: 0x13, size: 1)) }
}
