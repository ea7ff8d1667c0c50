/// A serving thread's memory for the data of the request it serves (a
/// WRITE's payload, a READ's result): requests up to `keptBytes` reuse
/// one allocation, so the steady stream of small requests allocates
/// nothing; a larger one gets memory of its own until the next request.
final class NBDRequestMemory {
    static let keptBytes = 1 << 20
    private let kept = UnsafeMutableRawBufferPointer.allocate(byteCount: keptBytes, alignment: 4096)
    private var large: UnsafeMutableRawBufferPointer?

    deinit {
        kept.deallocate()
        large?.deallocate()
    }

    /// `count` bytes, valid until the next call.
    func bytes(_ count: Int) -> UnsafeMutableRawBufferPointer {
        large?.deallocate()
        large = nil
        if count <= kept.count { return UnsafeMutableRawBufferPointer(rebasing: kept[..<count]) }
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        large = memory
        return memory
    }
}
