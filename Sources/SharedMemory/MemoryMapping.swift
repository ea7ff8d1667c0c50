import Glibc
import SystemPackage

/// A memfd mapped MAP_SHARED into this process: how a daemon reads and writes
/// guest RAM (or its own colo-cache) in place, with no copy through a socket.
/// Unmapped when the last reference goes.
public final class MemoryMapping: @unchecked Sendable {
    /// Start of the mapping. Writers on several threads touch disjoint
    /// pages; the owner of the mapping decides who writes where.
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let writable: Bool

    /// Maps all of `memfd`. The size must be sealed: a peer shrinking the
    /// file under a mapping would turn every later access into SIGBUS.
    public init(memfd: Memfd, writable: Bool) throws(MemoryMappingError) {
        guard memfd.isSizeSealed else { throw .sizeNotSealed }
        let size: Int
        do {
            size = try memfd.size()
        } catch {
            throw .system("fstat", error)
        }
        guard size > 0 else { throw .empty }
        let protection = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        let address = mmap(nil, size, protection, MAP_SHARED, memfd.fd.rawValue, 0)
        guard let address, address != MAP_FAILED else { throw .system("mmap", Errno(rawValue: errno)) }
        self.base = address
        self.size = size
        self.writable = writable
    }

    /// Allocates and maps every page now (MADV_POPULATE_WRITE), so that
    /// writing it later takes no page fault: on a host where a fault costs
    /// tens of µs (nested or software virtualisation), a first pass over
    /// fresh memory runs several times slower than memcpy otherwise.
    public func populate() throws(MemoryMappingError) {
        precondition(writable, "only a writable mapping can be populated for writing")
        guard madvise(base, size, MADV_POPULATE_WRITE) == 0 else { throw .system("madvise(MADV_POPULATE_WRITE)", Errno(rawValue: errno)) }
    }

    deinit {
        munmap(base, size)
    }
}

public enum MemoryMappingError: Error, Sendable, Equatable, CustomStringConvertible {
    case sizeNotSealed
    case empty
    case system(String, Errno)

    public var description: String {
        switch self {
        case .sizeNotSealed: return "the memfd's size is not sealed (F_SEAL_GROW and F_SEAL_SHRINK)"
        case .empty: return "the memfd is empty"
        case let .system(operation, errno): return "\(operation): \(errno)"
        }
    }
}

extension Memfd {
    /// Reads the whole memfd with pread, for small blobs (bitmaps, device
    /// state) from a peer that may not have sealed them: pread of a file
    /// that shrinks returns short, where a mapping would fault.
    public func readAll(limit: Int) throws(MemoryMappingError) -> [UInt8] {
        let size: Int
        do {
            size = try self.size()
        } catch {
            throw .system("fstat", error)
        }
        guard size <= limit else { throw .system("size \(size) over the limit \(limit)", .fileTooLarge) }
        var bytes = [UInt8](repeating: 0, count: size)
        var offset = 0
        while offset < size {
            let count = bytes.withUnsafeMutableBytes {
                pread(fd.rawValue, $0.baseAddress! + offset, size - offset, off_t(offset))
            }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .system("pread", Errno(rawValue: errno)) }
            if count == 0 { return Array(bytes[0..<offset]) }
            offset += count
        }
        return bytes
    }

    /// Creates a sealed memfd holding `bytes`: bulk data handed to a peer.
    public static func holding(_ bytes: [UInt8], name: String) throws(MemoryMappingError) -> Memfd {
        let memfd: Memfd
        do {
            memfd = try Memfd.create(name: name, size: 0, sealedSize: false)
        } catch {
            throw .system("memfd_create", error)
        }
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes {
                pwrite(memfd.fd.rawValue, $0.baseAddress! + offset, bytes.count - offset, off_t(offset))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                try? memfd.fd.close()
                throw .system("pwrite", Errno(rawValue: errno))
            }
            offset += count
        }
        guard memfd.sealSize() else {
            try? memfd.fd.close()
            throw .system("F_ADD_SEALS", Errno(rawValue: errno))
        }
        return memfd
    }
}
