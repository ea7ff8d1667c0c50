/// Primary frames waiting for the secondary's agreement: one frame, or the
/// fragments of one datagram. Released exactly once (by a match or by a
/// checkpoint), expired at most once.
final class HeldUnit {
    var frames: [[UInt8]]
    let arrival: UInt64
    let deadline: UInt64
    var flow: FlowKey
    var released = false
    var expired = false

    init(frames: [[UInt8]], arrival: UInt64, deadline: UInt64, flow: FlowKey) {
        self.frames = frames
        self.arrival = arrival
        self.deadline = deadline
        self.flow = flow
    }
}

/// A FIFO with O(1) removal at the head (Array's removeFirst is O(n)).
struct FIFO<Element> {
    private var storage: [Element] = []
    private var head = 0

    var isEmpty: Bool { head == storage.count }
    var count: Int { storage.count - head }
    var first: Element? { isEmpty ? nil : storage[head] }

    mutating func append(_ element: Element) { storage.append(element) }

    @discardableResult
    mutating func removeFirst() -> Element {
        let element = storage[head]
        head += 1
        if head >= 1024 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    mutating func removeAll() {
        storage.removeAll(keepingCapacity: true)
        head = 0
    }

    /// The elements from the head, in order.
    var elements: ArraySlice<Element> { storage[head...] }

    subscript(offset: Int) -> Element { storage[head + offset] }
}

/// Bytes of one side's stream from the verified point on.
struct ByteQueue {
    private var storage: [UInt8] = []
    private var head = 0

    var count: Int { storage.count - head }

    mutating func append(_ bytes: ArraySlice<UInt8>) { storage.append(contentsOf: bytes) }

    mutating func drop(_ count: Int) {
        head += count
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 65_536 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
    }

    mutating func removeAll() {
        storage.removeAll(keepingCapacity: true)
        head = 0
    }

    /// The index of the first of `count` leading bytes that differs from
    /// `other`'s, or nil when they agree.
    func firstDifference(from other: ByteQueue, count: Int) -> Int? {
        storage.withUnsafeBufferPointer { mine in
            other.storage.withUnsafeBufferPointer { theirs in
                let a = UnsafeRawPointer(mine.baseAddress! + head)
                let b = UnsafeRawPointer(theirs.baseAddress! + other.head)
                if memcmp(a, b, count) == 0 { return nil }
                var index = 0
                while mine[head + index] == theirs[other.head + index] { index += 1 }
                return index
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
