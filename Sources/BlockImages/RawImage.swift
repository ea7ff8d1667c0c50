import BlockDevice
import Glibc

/// A disk as a sparse raw file: byte N of the disk is byte N of the file.
/// Trims and zeroed ranges become holes, so a mostly empty disk costs
/// little space and copies of it (resync) skip what was never written.
public final class RawImage: BlockDevice {
    public let path: String
    public let capacity: UInt64
    public let features: BlockFeatures
    private let fd: Int32

    /// Opens the image at `path`. With `createSize`, a missing file is
    /// created sparse with that size; an existing one is used as it is.
    public init(path: String, createSize: UInt64? = nil, readOnly: Bool = false) throws(BlockError) {
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if createSize != nil && !readOnly { flags |= O_CREAT }
        let fd = open(path, flags, 0o600)
        guard fd >= 0 else { throw .io(operation: "open \(path)", errno: errno) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let error = errno
            close(fd)
            throw .io(operation: "fstat \(path)", errno: error)
        }
        var size = UInt64(status.st_size)
        if size == 0, let createSize {
            guard ftruncate(fd, off_t(createSize)) == 0 else {
                let error = errno
                close(fd)
                throw .io(operation: "ftruncate \(path)", errno: error)
            }
            size = createSize
        }
        guard (status.st_mode & S_IFMT) == S_IFREG, size > 0 else {
            close(fd)
            throw .unsupported("\(path) is not a regular file with a size")
        }
        self.path = path
        self.fd = fd
        self.capacity = size
        self.features = BlockFeatures(readOnly: readOnly)
    }

    deinit {
        close(fd)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try check(offset, UInt64(buffer.count))
        try FileIO.read(fd, into: buffer, at: offset)
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try checkWritable(offset, UInt64(data.count))
        try FileIO.write(fd, data, at: offset)
        if fua { try FileIO.sync(fd) }
    }

    public func flush() throws(BlockError) {
        try FileIO.sync(fd)
    }

    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try writeZeroes(at: offset, length: length, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try checkWritable(offset, length)
        try FileIO.zero(fd, at: offset, length: length)
        if fua { try FileIO.sync(fd) }
    }

    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent] {
        try check(offset, length)
        return try FileIO.allocation(fd, at: offset, length: length)
    }

    private func check(_ offset: UInt64, _ length: UInt64) throws(BlockError) {
        guard contains(offset: offset, length: length) else {
            throw .outOfRange(offset: offset, length: length, capacity: capacity)
        }
    }

    private func checkWritable(_ offset: UInt64, _ length: UInt64) throws(BlockError) {
        guard !features.readOnly else { throw .readOnly }
        try check(offset, length)
    }
}
