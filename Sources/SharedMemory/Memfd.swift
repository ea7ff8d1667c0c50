internal import CSupport
import Glibc
import SystemPackage

/// Anonymous shared memory as an fd (memfd_create): how guest RAM, the
/// colo-cache and bulk control data are shared between daemons, by handing
/// the fd over instead of copying bytes through sockets.
public struct Memfd: Sendable {
    public let fd: FileDescriptor

    public init(adopting fd: FileDescriptor) {
        self.fd = fd
    }

    /// Creates a memfd of `size` bytes (zero-filled, pages allocated lazily).
    /// With `sealedSize`, the size can never change again, so a peer that maps
    /// it cannot be made to fault by someone shrinking it under its feet.
    public static func create(name: String, size: Int, sealedSize: Bool) throws(Errno) -> Memfd {
        let raw = colo_memfd_create(name, colo_mfd_cloexec | colo_mfd_allow_sealing)
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        let memfd = Memfd(adopting: FileDescriptor(rawValue: raw))
        do throws(Errno) {
            guard ftruncate(raw, off_t(size)) == 0 else { throw Errno(rawValue: errno) }
            if sealedSize {
                guard colo_add_seals(raw, colo_seal_grow | colo_seal_shrink | colo_seal_seal) == 0 else {
                    throw Errno(rawValue: errno)
                }
            }
        } catch {
            try? memfd.fd.close()
            throw error
        }
        return memfd
    }

    /// Seals the size (grow, shrink, and further seals): for a memfd filled
    /// before it is handed over. False with errno set on failure.
    public func sealSize() -> Bool {
        colo_add_seals(fd.rawValue, colo_seal_grow | colo_seal_shrink | colo_seal_seal) == 0
    }

    /// True when the size can no longer change (grow and shrink sealed).
    public var isSizeSealed: Bool {
        let seals = colo_get_seals(fd.rawValue)
        return seals >= 0 && (seals & colo_seal_grow) != 0 && (seals & colo_seal_shrink) != 0
    }

    /// The current size in bytes.
    public func size() throws(Errno) -> Int {
        var status = stat()
        guard fstat(fd.rawValue, &status) == 0 else { throw Errno(rawValue: errno) }
        return Int(status.st_size)
    }
}
