internal import CSupport
import Glibc
import SharedMemory
import SystemPackage

/// Where a range of guest-physical addresses lives in the RAM memfd.
public struct GuestRegion: Sendable, Equatable {
    public var guestAddress: UInt64
    public var size: UInt64
    public var memfdOffset: UInt64

    public init(guestAddress: UInt64, size: UInt64, memfdOffset: UInt64) {
        self.guestAddress = guestAddress
        self.size = size
        self.memfdOffset = memfdOffset
    }

    public var guestEnd: UInt64 { guestAddress + size }
}

/// Why a guest memory access was refused.
public enum GuestMemoryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// [address, address+length) is not inside one RAM region.
    case outsideRAM(address: UInt64, length: UInt64)
    case badSize(String)
    /// Guest RAM handed over by another process that cannot be used safely
    /// (not sealed against shrinking, regions that do not fit or overlap).
    case unusable(String)
    case system(String, Errno)

    public var description: String {
        switch self {
        case let .outsideRAM(address, length):
            return "guest range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) is outside RAM"
        case let .badSize(detail), let .unusable(detail): return detail
        case let .system(call, errno): return "\(call): \(errno)"
        }
    }
}

/// Guest RAM: one size-sealed memfd, mapped once into this process and
/// handed to KVM (and, as an fd, to the block service and checkpointd,
/// which map it with `init(adopting:regions:)`).
///
/// Below 4 GiB the x86 address space needs a hole for devices, so RAM past
/// `lowMemoryLimit` continues at 4 GiB; the memfd itself is contiguous.
/// Every access from device code goes through the bounds-checked functions
/// here, so an address a guest made up can never reach outside its RAM, and
/// every device write is recorded in `deviceWrites` (KVM's dirty log only
/// sees the guest's own writes).
public final class GuestMemory: @unchecked Sendable {
    /// RAM below 4 GiB ends here at the latest (the rest is the PCI hole).
    public static let lowMemoryLimit: UInt64 = 0xC000_0000
    public static let pageSize = 4096

    public let memfd: Memfd
    public let regions: [GuestRegion]
    public let size: UInt64
    private let base: UnsafeMutableRawPointer
    /// Pages written by device models (and by peers on their behalf).
    public let deviceWrites: DirtyPageBitmap

    /// Creates `size` bytes of zeroed guest RAM (a multiple of 4 KiB).
    public init(size: UInt64, name: String = "colo-guest-ram") throws(GuestMemoryError) {
        guard size > 0, size % UInt64(Self.pageSize) == 0, size <= 1 << 40 else {
            throw .badSize("guest RAM size \(size) must be a non-zero multiple of 4 KiB up to 1 TiB")
        }
        do {
            memfd = try Memfd.create(name: name, size: Int(size), sealedSize: true)
        } catch {
            throw .system("memfd_create", error)
        }
        // MAP_NORESERVE: pages are allocated as the guest touches them. Huge
        // pages are refused: this machine's KVM loses writes through them.
        let mapping = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                           memfd.fd.rawValue, 0)
        guard let mapping, mapping != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            try? memfd.fd.close()
            throw .system("mmap guest RAM", error)
        }
        _ = madvise(mapping, Int(size), MADV_NOHUGEPAGE)
        base = mapping
        self.size = size
        let low = min(size, Self.lowMemoryLimit)
        var regions = [GuestRegion(guestAddress: 0, size: low, memfdOffset: 0)]
        if size > low {
            regions.append(GuestRegion(guestAddress: 1 << 32, size: size - low, memfdOffset: low))
        }
        self.regions = regions
        deviceWrites = DirtyPageBitmap(pages: Int(size) / Self.pageSize)
    }

    /// The most regions a handed-over RAM may have (a guest has two: below
    /// the PCI hole and above 4 GiB).
    public static let maxRegions = 64

    /// Maps guest RAM another process created and handed over as `fd`
    /// (this object now owns it), laid out as `regions` say: the block
    /// service's view of vmmd's RAM. The memfd must be sealed against
    /// shrinking, or its creator could truncate it under the mapping and
    /// this process would die of SIGBUS at its next access; each region
    /// must lie inside the memfd and none may overlap another, so every
    /// guest address names exactly one byte of the file.
    public init(adopting fd: FileDescriptor, regions: [GuestRegion]) throws(GuestMemoryError) {
        memfd = Memfd(adopting: fd)
        do throws(GuestMemoryError) {
            let seals = colo_get_seals(fd.rawValue)
            guard seals >= 0, seals & colo_seal_shrink != 0 else {
                throw .unusable("the guest memory fd is not a memfd sealed against shrinking (F_SEAL_SHRINK)")
            }
            let fileSize: Int
            do { fileSize = try memfd.size() } catch { throw .system("fstat guest memory", error) }
            guard fileSize > 0 else { throw .unusable("the guest memory fd has no size") }
            try Self.check(regions, fitting: UInt64(fileSize))
            guard let mapping = mmap(nil, fileSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd.rawValue, 0),
                  mapping != MAP_FAILED else {
                throw .system("mmap guest RAM", Errno(rawValue: errno))
            }
            base = mapping
            size = UInt64(fileSize)
        } catch {
            try? fd.close()
            throw error
        }
        self.regions = regions
        deviceWrites = DirtyPageBitmap(pages: (Int(size) + Self.pageSize - 1) / Self.pageSize)
    }

    private static func check(_ regions: [GuestRegion], fitting fileSize: UInt64) throws(GuestMemoryError) {
        guard !regions.isEmpty, regions.count <= maxRegions else {
            throw .unusable("\(regions.count) memory regions (1-\(maxRegions) allowed)")
        }
        for (index, region) in regions.enumerated() {
            let (guestEnd, guestOverflow) = region.guestAddress.addingReportingOverflow(region.size)
            let (fileEnd, fileOverflow) = region.memfdOffset.addingReportingOverflow(region.size)
            guard region.size > 0, !guestOverflow, !fileOverflow, fileEnd <= fileSize else {
                throw .unusable("region at guest 0x\(String(region.guestAddress, radix: 16)) of \(region.size) bytes does not fit the memfd")
            }
            for other in regions[..<index] where region.guestAddress < other.guestEnd && other.guestAddress < guestEnd {
                throw .unusable("regions at guest 0x\(String(other.guestAddress, radix: 16)) and 0x\(String(region.guestAddress, radix: 16)) overlap")
            }
        }
    }

    deinit {
        munmap(base, Int(size))
        try? memfd.fd.close()
    }

    /// Where a region starts in this process (for KVM's memory slots).
    public func hostAddress(of region: GuestRegion) -> UnsafeMutableRawPointer {
        base + Int(region.memfdOffset)
    }

    /// The memfd offset of [address, address+length), if that range lies
    /// inside one region. A zero length is inside when `address` is.
    public func memfdOffset(of address: UInt64, length: UInt64) -> UInt64? {
        for region in regions where address >= region.guestAddress && address < region.guestEnd {
            let (end, overflow) = address.addingReportingOverflow(length)
            guard !overflow, end <= region.guestEnd else { return nil }
            return region.memfdOffset + (address - region.guestAddress)
        }
        return nil
    }

    /// The host pointer for reading [address, address+length).
    public func pointer(at address: UInt64, length: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        guard length >= 0, let offset = memfdOffset(of: address, length: UInt64(length)) else {
            throw .outsideRAM(address: address, length: UInt64(max(length, 0)))
        }
        return base + Int(offset)
    }

    /// [address, address+length) in this process, for a peer that serves a
    /// device from another process (the block service filling a read
    /// buffer). Its writes are not recorded here: the device's owner in
    /// vmmd records them in the RAM's own `deviceWrites` (`recordWrite`).
    public func buffer(at address: UInt64, length: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: try pointer(at: address, length: length), count: length)
    }

    /// The host pointer for writing [address, address+length); the pages
    /// are recorded as written by a device.
    public func pointer(forWritingAt address: UInt64, length: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        let pointer = try pointer(at: address, length: length)
        deviceWrites.mark(memfdOffset: pointer - base, length: length)
        return pointer
    }

    /// Records a write a peer made into [address, address+length) on a
    /// device's behalf (the block service filling a read buffer).
    public func recordWrite(at address: UInt64, length: Int) {
        if let offset = memfdOffset(of: address, length: UInt64(max(length, 0))) {
            deviceWrites.mark(memfdOffset: Int(offset), length: length)
        }
    }

    /// A little-endian integer at `address` (any alignment).
    public func load<T: FixedWidthInteger>(_ type: T.Type, at address: UInt64) throws(GuestMemoryError) -> T {
        T(littleEndian: try pointer(at: address, length: MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    /// Stores a little-endian integer at `address` (any alignment).
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        try pointer(forWritingAt: address, length: MemoryLayout<T>.size).storeBytes(of: value.littleEndian, as: T.self)
    }

    /// Copies bytes out of guest RAM.
    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let source = try pointer(at: address, length: count)
        return [UInt8](UnsafeRawBufferPointer(start: source, count: count))
    }

    /// Copies bytes into guest RAM.
    public func write(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        let target = try pointer(forWritingAt: address, length: bytes.count)
        UnsafeMutableRawBufferPointer(start: target, count: bytes.count).copyBytes(from: bytes)
    }

    /// Fills guest RAM with zeros.
    public func zero(at address: UInt64, count: Int) throws(GuestMemoryError) {
        memset(try pointer(forWritingAt: address, length: count), 0, count)
    }

    /// A 16-bit ring index the driver publishes (acquire: what it wrote
    /// before the index is visible after this load). Must be 2-aligned.
    public func loadAcquireUInt16(at address: UInt64) throws(GuestMemoryError) -> UInt16 {
        guard address % 2 == 0 else { throw .outsideRAM(address: address, length: 2) }
        return colo_load_acquire_u16(try pointer(at: address, length: 2))
    }

    /// Publishes a 16-bit ring index (release: everything written before is
    /// visible to the driver first). Must be 2-aligned.
    public func storeReleaseUInt16(_ value: UInt16, at address: UInt64) throws(GuestMemoryError) {
        guard address % 2 == 0 else { throw .outsideRAM(address: address, length: 2) }
        colo_store_release_u16(try pointer(forWritingAt: address, length: 2), value)
    }

    /// A full memory fence between this thread's stores and later loads.
    public func fence() {
        colo_fence_seq_cst()
    }
}
