import ControlSocket
import Devices
import Glibc
import GuestMemory
import KVM
import SharedMemory
import SystemPackage

/// One dirty-log sync: the pages written since the previous sync.
///
/// `bitmap` is a size-sealed memfd in the format checkpointd reads: bit i
/// set means the 4 KiB page at RAM memfd offset i * 4096 was written; bit
/// i is bit (i % 64) of little-endian 64-bit word i / 64; exactly
/// ceil(pages / 64) words, bits past the last page zero.
public struct DirtyLogSync: Sendable {
    public let bitmap: Memfd
    public let pageCount: Int
    /// Pages set in the bitmap.
    public let dirtyPages: Int
    /// Of the pages vmmd's devices (and the block service) wrote, how many;
    /// some may also be in KVM's log.
    public let devicePages: Int
    /// The first sync: logging started now, so every page is reported.
    public let allPages: Bool
    public let duration: Duration
}

/// KVM's log of guest writes OR'd with the pages device models wrote
/// (KVM sees only the guest's own writes). Logging starts with the first
/// sync, which reports every page: nothing is known of earlier writes, and
/// a guest that nobody checkpoints pays no write-protection faults.
///
/// KVM writes each memory slot's bitmap straight into the mapped result
/// memfd at the words of the slot's first page (slots start at multiples
/// of 64 pages), so no page is visited one by one.
final class DirtyLogTracker: @unchecked Sendable {
    let mode: DirtyLogMode
    private let kvm: KVMVirtualMachine
    private let memory: GuestMemory
    private let lock = ThreadLock()
    private var logging = false

    init(kvm: KVMVirtualMachine, memory: GuestMemory, mode: DirtyLogMode) {
        self.kvm = kvm
        self.memory = memory
        self.mode = mode == .manualClear && !kvm.supportsManualDirtyLogClear ? .getAndClear : mode
    }

    var pageCount: Int { Int(memory.size) / GuestMemory.pageSize }

    func sync() throws(VMStateError) -> DirtyLogSync {
        try lock.withLock { () throws(VMStateError) -> DirtyLogSync in
            let began = ContinuousClock.now
            let pages = pageCount
            let words = (pages + 63) / 64
            let bitmap: Memfd
            do {
                bitmap = try Memfd.create(name: "colo-dirty-bitmap", size: words * 8, sealedSize: true)
            } catch {
                throw .memory("dirty bitmap memfd: \(error)")
            }
            guard let mapping = mmap(nil, words * 8, PROT_READ | PROT_WRITE, MAP_SHARED, bitmap.fd.rawValue, 0),
                  mapping != MAP_FAILED else {
                let error = Errno(rawValue: errno)
                try? bitmap.fd.close()
                throw .memory("mapping the dirty bitmap: \(error)")
            }
            defer { munmap(mapping, words * 8) }
            let target = mapping.assumingMemoryBound(to: UInt64.self)
            let first = !logging
            do {
                if first {
                    try startLogging()
                    // Manual mode starts with every page marked dirty
                    // (KVM_DIRTY_LOG_INITIALLY_SET): collect and clear that
                    // now, or the second sync would report every page again.
                    try collectKVMLog(into: target)
                    for word in 0..<words { target[word] = UInt64.max }
                    if pages % 64 != 0 { target[words - 1] = (UInt64(1) << UInt64(pages % 64)) - 1 }
                } else {
                    try collectKVMLog(into: target)
                }
            } catch {
                try? bitmap.fd.close()
                throw .kvm("dirty log: \(error)")
            }
            let devicePages = memory.deviceWrites.drain(into: target)
            var dirty = 0
            for word in 0..<words { dirty += target[word].nonzeroBitCount }
            return DirtyLogSync(bitmap: bitmap, pageCount: pages, dirtyPages: dirty, devicePages: devicePages,
                                allPages: first, duration: .now - began)
        }
    }

    private func startLogging() throws(KVMError) {
        if mode == .manualClear { try kvm.enableManualDirtyLogClear() }
        for (slot, region) in memory.regions.enumerated() {
            try kvm.setMemoryRegion(slot: UInt32(slot), guestAddress: region.guestAddress, size: region.size,
                                    hostAddress: memory.hostAddress(of: region), logDirtyPages: true)
        }
        logging = true
    }

    private func collectKVMLog(into target: UnsafeMutablePointer<UInt64>) throws(KVMError) {
        for (slot, region) in memory.regions.enumerated() {
            let firstPage = Int(region.memfdOffset) / GuestMemory.pageSize
            precondition(firstPage % 64 == 0, "memory slots start at multiples of 64 pages")
            let words = UnsafeMutableRawPointer(target + firstPage / 64)
            try kvm.dirtyLog(slot: UInt32(slot), into: words)
            if mode == .manualClear {
                try kvm.clearDirtyLog(slot: UInt32(slot), pages: UInt32(region.size / UInt64(GuestMemory.pageSize)),
                                      bitmap: words)
            }
        }
    }
}

extension VirtualMachine {
    /// The pages written since the last sync (the first: all pages),
    /// device writes included.
    public func syncDirtyLog() throws(VMStateError) -> DirtyLogSync {
        try dirtyLog.sync()
    }

    /// The mode in use (manual clear falls back to get-and-clear where KVM
    /// lacks it).
    public var dirtyLogMode: DirtyLogMode { dirtyLog.mode }
}
