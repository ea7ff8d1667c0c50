import Glibc

/// A connected TCP socket to the peer checkpointd, handed over by
/// supervisord: blocking I/O bounded by a timeout, gathered sends and
/// scattered receives straight from and into guest memory.
///
/// Small control frames must never wait on Nagle's algorithm or a delayed
/// ACK (measured: QEMU's COLO loses ~40 ms twice per checkpoint that way),
/// so every channel sets TCP_NODELAY, and readers of small frames re-arm
/// TCP_QUICKACK before each read (the kernel clears it on its own).
public struct PeerSocket: Sendable {
    public let fd: Int32

    /// Adopts `fd` after checking it is a TCP stream socket, and sets
    /// TCP_NODELAY and send/receive timeouts of `timeout`.
    public init(adopting fd: Int32, timeout: Duration) throws(RAMStreamError) {
        var type: Int32 = 0
        var protocolNumber: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
            throw .notTCP("fd \(fd) is not a socket (\(String(cString: strerror(errno))))")
        }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocolNumber, &length) == 0,
              type == Int32(SOCK_STREAM.rawValue), protocolNumber == Int32(IPPROTO_TCP) else {
            throw .notTCP("fd \(fd) is a socket of type \(type), protocol \(protocolNumber)")
        }
        self.fd = fd
        try setOption(IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY")
        let (seconds, attoseconds) = timeout.components
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        for option in [SO_SNDTIMEO, SO_RCVTIMEO] {
            guard setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
                throw .system("setsockopt(SO_SNDTIMEO/SO_RCVTIMEO)", errno)
            }
        }
    }

    /// Asks the kernel to acknowledge the next data at once.
    public func quickAck() {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Ends the connection both ways: wakes any thread blocked on it.
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    public func close() {
        _ = Glibc.close(fd)
    }

    public func send(_ bytes: [UInt8]) throws(RAMStreamError) {
        try bytes.withBytes { (raw) throws(RAMStreamError) in
            var vector = [iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)]
            try send(&vector)
        }
    }

    /// Sends every byte the vectors name; `vectors` is consumed.
    public func send(_ vectors: inout [iovec]) throws(RAMStreamError) {
        var first = 0
        while first < vectors.count {
            let sent = vectors.withUnsafeMutableBufferPointer { buffer -> Int in
                var message = msghdr()
                message.msg_iov = buffer.baseAddress! + first
                message.msg_iovlen = buffer.count - first
                return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
                if errno == EPIPE || errno == ECONNRESET { throw .closed }
                throw .system("sendmsg", errno)
            }
            first = Self.advance(&vectors, from: first, by: sent)
        }
    }

    /// Fills every byte the vectors name. With `idle`, the peer may take as
    /// long as it likes before the first byte (a channel waiting for the
    /// next checkpoint); once a frame has started, it must keep coming
    /// within the timeout.
    public func receive(_ vectors: inout [iovec], idle: Bool) throws(RAMStreamError) {
        let expected = vectors.reduce(0) { $0 + $1.iov_len }
        var received = 0
        var first = 0
        while first < vectors.count {
            let count = vectors.withUnsafeMutableBufferPointer { buffer -> Int in
                var message = msghdr()
                message.msg_iov = buffer.baseAddress! + first
                message.msg_iovlen = buffer.count - first
                return recvmsg(fd, &message, 0)
            }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    if idle && received == 0 { continue }
                    throw .timedOut
                }
                if errno == ECONNRESET { throw received == 0 && idle ? .closed : .truncated(received: received, expected: expected) }
                throw .system("recvmsg", errno)
            }
            if count == 0 {
                throw received == 0 && idle ? .closed : .truncated(received: received, expected: expected)
            }
            received += count
            first = Self.advance(&vectors, from: first, by: count)
        }
    }

    /// Receives exactly `count` bytes into a new array.
    public func receive(count: Int, idle: Bool) throws(RAMStreamError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard count > 0 else { return bytes }
        try bytes.withMutableBytes { (raw) throws(RAMStreamError) in
            var vector = [iovec(iov_base: raw.baseAddress, iov_len: raw.count)]
            try receive(&vector, idle: idle)
        }
        return bytes
    }

    /// Drops `count` bytes from the front of vectors[first...]; returns the
    /// first vector with bytes left.
    private static func advance(_ vectors: inout [iovec], from first: Int, by count: Int) -> Int {
        var index = first
        var remaining = count
        while index < vectors.count && remaining >= vectors[index].iov_len {
            remaining -= vectors[index].iov_len
            index += 1
        }
        if index < vectors.count && remaining > 0 {
            vectors[index].iov_base = vectors[index].iov_base! + remaining
            vectors[index].iov_len -= remaining
        }
        return index
    }

    private func setOption(_ level: Int, _ option: Int32, _ value: Int32, _ name: String) throws(RAMStreamError) {
        var value = value
        guard setsockopt(fd, Int32(level), option, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw .notTCP("\(name): \(String(cString: strerror(errno)))")
        }
    }
}

extension PeerSocket {
    /// Sends one control frame.
    public func send(_ frame: ControlFrame) throws(RAMStreamError) {
        try send(frame.encoded())
    }

    /// Reads one control frame. With `idle`, waits as long as it takes for
    /// it to start; otherwise within the socket's timeout.
    public func receiveControlFrame(idle: Bool) throws(RAMStreamError) -> ControlFrame {
        quickAck()
        let header = try receive(count: ControlFrame.headerSize, idle: idle)
        let (kind, sequence, length) = try ControlFrame.decodeHeader(header)
        let payload = try receive(count: length, idle: false)
        quickAck()
        return try ControlFrame.decodePayload(kind: kind, sequence: sequence, payload: payload)
    }
}
