import GuestMemory
import Glibc
import SystemPackage

/// The bytes of a kernel or initrd: a file handed over as an fd, or bytes
/// in memory (tests). Loaders read headers through `bytes` and copy bulk
/// contents straight into guest RAM through `copy`.
public protocol ImageSource {
    var size: Int { get }
    /// `count` bytes at `offset`; fails if they are not all there.
    func bytes(at offset: Int, count: Int, what: String) throws(LoaderError) -> [UInt8]
    /// Copies `count` bytes from `offset` to `destination`.
    func copy(at offset: Int, count: Int, to destination: UnsafeMutableRawPointer, what: String) throws(LoaderError)
}

extension ImageSource {
    /// A little-endian integer at `offset`.
    func integer<T: FixedWidthInteger>(_ type: T.Type, at offset: Int, what: String) throws(LoaderError) -> T {
        let raw = try bytes(at: offset, count: MemoryLayout<T>.size, what: what)
        return raw.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    /// Copies [offset, offset+count) of the image to guest RAM at `address`.
    func load(at offset: Int, count: Int, into memory: GuestMemory, address: UInt64,
              what: String) throws(LoaderError) {
        guard count > 0 else { return }
        let destination: UnsafeMutableRawPointer
        do {
            destination = try memory.pointer(forWritingAt: address, length: count)
        } catch {
            throw .doesNotFit("\(what) (\(count) bytes at 0x\(String(address, radix: 16))) lies outside guest RAM")
        }
        try copy(at: offset, count: count, to: destination, what: what)
    }
}

/// An image held in memory.
public struct ByteImage: ImageSource {
    public let contents: [UInt8]

    public init(_ contents: [UInt8]) {
        self.contents = contents
    }

    public var size: Int { contents.count }

    public func bytes(at offset: Int, count: Int, what: String) throws(LoaderError) -> [UInt8] {
        guard offset >= 0, count >= 0, offset <= contents.count, count <= contents.count - offset else {
            throw .truncated("\(what): needs bytes \(offset)..<\(offset + count), the image has \(contents.count)")
        }
        return Array(contents[offset..<(offset + count)])
    }

    public func copy(at offset: Int, count: Int, to destination: UnsafeMutableRawPointer,
                     what: String) throws(LoaderError) {
        let slice = try bytes(at: offset, count: count, what: what)
        slice.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress!, byteCount: count) }
    }
}

/// An image read from an fd with pread (its offset is never moved, so the
/// sender's fd stays usable).
public struct FileImage: ImageSource {
    public let fd: FileDescriptor
    public let size: Int

    /// Wraps `fd`; fails unless it is a regular file (or a memfd).
    public init(fd: FileDescriptor, what: String) throws(LoaderError) {
        var status = stat()
        guard fstat(fd.rawValue, &status) == 0 else { throw .io("fstat of \(what)", Errno(rawValue: errno)) }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw .badFormat("\(what) is not a regular file")
        }
        self.fd = fd
        self.size = Int(status.st_size)
    }

    public func bytes(at offset: Int, count: Int, what: String) throws(LoaderError) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        var failure: LoaderError?
        result.withUnsafeMutableBytes { buffer in
            guard count > 0 else { return }
            do throws(LoaderError) {
                try copy(at: offset, count: count, to: buffer.baseAddress!, what: what)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
        return result
    }

    public func copy(at offset: Int, count: Int, to destination: UnsafeMutableRawPointer,
                     what: String) throws(LoaderError) {
        guard offset >= 0, count >= 0, offset <= size, count <= size - offset else {
            throw .truncated("\(what): needs bytes \(offset)..<\(offset + count), the image has \(size)")
        }
        var done = 0
        while done < count {
            let got = pread(fd.rawValue, destination + done, count - done, off_t(offset + done))
            if got < 0 {
                if errno == EINTR { continue }
                throw .io("reading \(what)", Errno(rawValue: errno))
            }
            if got == 0 { throw .truncated("\(what): the file ended early") }
            done += got
        }
    }
}
