import ControlSocket
import Glibc
import Synchronization

/// A connected stream socket (TCP or Unix) carrying NBD: buffered reads
/// for the small headers, payloads read straight into their destination,
/// and writes of a header plus payload in one `sendmsg` without copying.
///
/// One thread reads at a time (the connection's reader); any thread may
/// send, and sends are serialised so replies never interleave.
public final class NBDSocket: @unchecked Sendable {
    public let fd: Int32
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    /// Held across `sendmsg`, which may block: a plain mutex, not a
    /// spinning one.
    private let sendLock = ThreadLock()
    private let closed = Atomic<Bool>(false)

    /// Adopts `fd`; the socket closes it.
    public init(adopting fd: Int32) {
        self.fd = fd
        buffer = .allocate(byteCount: 64 * 1024, alignment: 16)
        var one: Int32 = 1
        // Harmless on Unix sockets (fails with EOPNOTSUPP); on TCP, small
        // replies must not wait for Nagle.
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit {
        close()
        buffer.deallocate()
    }

    /// Makes a read that waits longer than `timeout` for data fail with
    /// `.timedOut` (a peer that stopped answering).
    public func setReceiveTimeout(_ timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        var value = timeval(tv_sec: Int(clamping: seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Reads exactly `destination.count` bytes.
    public func read(into destination: UnsafeMutableRawBufferPointer) throws(NBDProtocolError) {
        var filled = 0
        let buffered = min(end - start, destination.count)
        if buffered > 0 {
            destination.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: buffered)
            start += buffered
            filled = buffered
        }
        while filled < destination.count {
            let wanted = destination.count - filled
            if wanted < buffer.count / 2 {
                // Small remainder: refill the buffer (it may bring the next header too).
                let count = try receive(into: UnsafeMutableRawBufferPointer(buffer))
                start = 0
                end = count
                let taken = min(count, wanted)
                (destination.baseAddress! + filled).copyMemory(from: buffer.baseAddress!, byteCount: taken)
                start = taken
                filled += taken
            } else {
                filled += try receive(into: UnsafeMutableRawBufferPointer(rebasing: destination[filled...]))
            }
        }
    }

    public func read(_ count: Int) throws(NBDProtocolError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { destination in
            Result { () throws(NBDProtocolError) in try read(into: destination) }
        }.get()
        return bytes
    }

    /// Reads and drops `count` bytes (a rejected write's payload).
    public func discard(_ count: UInt64) throws(NBDProtocolError) {
        var left = count
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        while left > 0 {
            let chunk = Int(min(left, UInt64(scratch.count)))
            try read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[..<chunk]))
            left -= UInt64(chunk)
        }
    }

    private func receive(into destination: UnsafeMutableRawBufferPointer) throws(NBDProtocolError) -> Int {
        while true {
            let count = recv(fd, destination.baseAddress, destination.count, 0)
            if count > 0 { return count }
            if count == 0 { throw .closed }
            if errno == EINTR { continue }
            if errno == ECONNRESET || errno == EBADF || errno == ENOTCONN { throw .closed }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
            throw .io("recv", errno: errno)
        }
    }

    /// Sends `header` then `payload` (if any) as one message.
    public func send(_ header: [UInt8], payload: UnsafeRawBufferPointer? = nil) throws(NBDProtocolError) {
        try header.withUnsafeBytes { head in
            Result { () throws(NBDProtocolError) in
                try sendLock.withLock { () throws(NBDProtocolError) in
                    try sendAll([head, payload ?? UnsafeRawBufferPointer(start: nil, count: 0)])
                }
            }
        }.get()
    }

    private func sendAll(_ parts: [UnsafeRawBufferPointer]) throws(NBDProtocolError) {
        var vectors = parts.filter { $0.count > 0 }.map {
            iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count)
        }
        var index = 0
        while index < vectors.count {
            let sent: Int = vectors.withUnsafeMutableBufferPointer { pointer in
                var message = msghdr()
                message.msg_iov = pointer.baseAddress! + index
                message.msg_iovlen = pointer.count - index
                return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 {
                if errno == EINTR { continue }
                if errno == EPIPE || errno == ECONNRESET || errno == EBADF { throw .closed }
                throw .io("sendmsg", errno: errno)
            }
            var advanced = sent
            while index < vectors.count && advanced >= vectors[index].iov_len {
                advanced -= vectors[index].iov_len
                index += 1
            }
            if index < vectors.count && advanced > 0 {
                vectors[index].iov_base += advanced
                vectors[index].iov_len -= advanced
            }
        }
    }

    /// Wakes a reader blocked on this socket; later reads and sends fail.
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(Glibc.SHUT_RDWR))
    }

    public func close() {
        if !closed.exchange(true, ordering: .acquiringAndReleasing) {
            _ = Glibc.close(fd)
        }
    }
}
