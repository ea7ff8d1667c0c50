import BlockDevice
internal import CSupport
import Glibc

/// Whole-buffer positioned I/O on a file, retrying short transfers and
/// EINTR, failing with the errno as a `BlockError`.
enum FileIO {
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let count = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "pread", errno: errno)
            }
            if count == 0 {
                // Past the end of a file shorter than the device: zeros.
                (buffer.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return
            }
            done += count
        }
    }

    static func write(_ fd: Int32, _ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < data.count {
            let count = pwrite(fd, data.baseAddress! + done, data.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "pwrite", errno: errno)
            }
            done += count
        }
    }

    static func sync(_ fd: Int32) throws(BlockError) {
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw .io(operation: "fdatasync", errno: errno)
        }
    }

    /// The range reads as zeros afterwards and holds no blocks where the
    /// file system can punch holes; elsewhere zeros are written.
    static func zero(_ fd: Int32, at offset: UInt64, length: UInt64) throws(BlockError) {
        guard length > 0 else { return }
        if colo_punch_hole(fd, off_t(offset), off_t(length)) == 0 { return }
        guard errno == EOPNOTSUPP else { throw .io(operation: "fallocate(PUNCH_HOLE)", errno: errno) }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { chunk.deallocate() }
        chunk.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let count = Int(min(UInt64(chunk.count), length - done))
            try write(fd, UnsafeRawBufferPointer(rebasing: chunk[..<count]), at: offset + done)
            done += UInt64(count)
        }
    }

    /// Data and hole runs of `[offset, offset + length)` (SEEK_DATA/SEEK_HOLE).
    static func allocation(_ fd: Int32, at offset: UInt64, length: UInt64) throws(BlockError) -> [BlockExtent] {
        var extents: [BlockExtent] = []
        let end = offset + length
        var position = offset
        func append(_ start: UInt64, _ stop: UInt64, _ hasData: Bool) {
            guard stop > start else { return }
            if var last = extents.last, last.hasData == hasData, last.offset + last.length == start {
                last.length += stop - start
                extents[extents.count - 1] = last
            } else {
                extents.append(BlockExtent(offset: start, length: stop - start, hasData: hasData))
            }
        }
        while position < end {
            let data = colo_seek_data(fd, off_t(position))
            if data < 0 {
                guard errno == ENXIO else { throw .io(operation: "lseek(SEEK_DATA)", errno: errno) }
                append(position, end, false)
                break
            }
            let dataStart = min(UInt64(data), end)
            append(position, dataStart, false)
            guard dataStart < end else { break }
            let hole = colo_seek_hole(fd, off_t(dataStart))
            guard hole >= 0 else { throw .io(operation: "lseek(SEEK_HOLE)", errno: errno) }
            let dataEnd = min(UInt64(hole), end)
            append(dataStart, dataEnd, true)
            position = dataEnd
        }
        return extents
    }
}
