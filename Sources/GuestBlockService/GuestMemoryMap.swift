internal import CSupport
import ColoProtocol
import Glibc

/// Guest RAM as vmmd handed it over: the memfd mapped shared, and the
/// guest-physical regions that live in it. Every guest buffer named in a
/// request is translated here, and one that is not wholly inside a single
/// region is refused: a guest (or a confused vmmd) cannot make blockd read
/// or write outside guest RAM.
final class GuestMemoryMap: @unchecked Sendable {
    struct Region {
        let guestAddress: UInt64
        let size: UInt64
        let memfdOffset: UInt64
    }

    private let base: UnsafeMutableRawPointer
    private let length: Int
    private let regions: [Region]

    /// Maps `fd` (which this map closes). The memfd must be sealed against
    /// shrinking: otherwise vmmd could truncate it under the mapping and
    /// blockd's next access would die of SIGBUS.
    init(fd: Int32, regions: [ColoGuestMemoryRegion]) throws(BlockSessionError) {
        defer { close(fd) }
        let seals = colo_get_seals(fd)
        guard seals >= 0, seals & colo_seal_shrink != 0 else {
            throw .badAttach("the guest memory fd is not a memfd sealed against shrinking (F_SEAL_SHRINK)")
        }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_size > 0 else { throw .badAttach("the guest memory fd has no size") }
        let size = UInt64(status.st_size)
        guard !regions.isEmpty, regions.count <= 64 else { throw .badAttach("\(regions.count) memory regions (1-64 allowed)") }
        var checked: [Region] = []
        for region in regions {
            let (guestEnd, guestOverflow) = region.guestAddress.addingReportingOverflow(region.size)
            let (fileEnd, fileOverflow) = region.memfdOffset.addingReportingOverflow(region.size)
            guard region.size > 0, !guestOverflow, !fileOverflow, fileEnd <= size else {
                throw .badAttach("region at guest 0x\(String(region.guestAddress, radix: 16)) of \(region.size) bytes does not fit the memfd")
            }
            for other in checked where region.guestAddress < other.guestAddress + other.size && other.guestAddress < guestEnd {
                throw .badAttach("regions at guest 0x\(String(other.guestAddress, radix: 16)) and 0x\(String(region.guestAddress, radix: 16)) overlap")
            }
            checked.append(Region(guestAddress: region.guestAddress, size: region.size, memfdOffset: region.memfdOffset))
        }
        guard let mapped = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED else {
            throw .badAttach("mmap of the guest memory failed: errno \(errno)")
        }
        base = mapped
        length = Int(size)
        self.regions = checked
    }

    deinit {
        munmap(base, length)
    }

    /// The host address of `[address, address + length)`, or nil when that
    /// range is not inside one region.
    func buffer(at address: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer? {
        for region in regions where address >= region.guestAddress {
            let offset = address - region.guestAddress
            guard offset < region.size, UInt64(length) <= region.size - offset else { continue }
            return UnsafeMutableRawBufferPointer(start: base + Int(region.memfdOffset + offset), count: Int(length))
        }
        return nil
    }
}

/// Why a block session ended.
public enum BlockSessionError: Error, Sendable, Equatable, CustomStringConvertible {
    case badAttach(String)
    case protocolViolation(String)
    case socket(String)

    public var description: String {
        switch self {
        case let .badAttach(detail): return "attach refused: \(detail)"
        case let .protocolViolation(detail): return "protocol violation: \(detail)"
        case let .socket(detail): return "socket: \(detail)"
        }
    }
}
