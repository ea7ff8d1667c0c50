import Glibc

/// A connected stream socket driven from an event loop that also serves
/// other fds (proxyd's frame link): nothing blocks but a stalled send,
/// bytes to send are gathered during a loop turn and leave in one send
/// (a burst of small messages costs one syscall, not one each), and a
/// receive takes whatever has arrived. The message format is the caller's;
/// ``FrameStream`` is the blocking one-message-at-a-time counterpart.
/// Used by one thread.
public final class BatchedStream {
    public let fd: Int32
    /// Bytes gathered for the next ``flush(stallLimit:)``; callers append.
    public var outgoing: [UInt8] = []
    private var incoming: UnsafeMutableRawBufferPointer
    /// The most bytes one ``receive(_:)`` takes, so that a busy link does
    /// not starve the loop's other fds.
    private let receiveLimit: Int

    /// Takes `fd` (connected, its TCP tuning done by ``TCPConnection``) and
    /// makes it non-blocking.
    public init(fd: Int32, receiveChunk: Int = 256 * 1024, receiveLimit: Int = 1 << 20) {
        self.fd = fd
        self.receiveLimit = receiveLimit
        incoming = .allocate(byteCount: receiveChunk, alignment: 16)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    deinit {
        incoming.deallocate()
    }

    public func close() {
        Glibc.close(fd)
    }

    /// Sends everything gathered. Waits for room at most `stallLimit` at a
    /// time; throws when the peer is gone or stalls longer.
    public func flush(stallLimit: Duration = .seconds(5)) throws(FrameError) {
        var offset = 0
        defer {
            if offset == outgoing.count {
                outgoing.removeAll(keepingCapacity: true)
            } else {
                outgoing.removeFirst(offset)
            }
        }
        while offset < outgoing.count {
            let sent = outgoing[offset...].withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent >= 0 {
                offset += sent
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN:
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let (seconds, attoseconds) = stallLimit.components
                let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
                guard poll(&entry, 1, milliseconds) > 0 else { throw .timedOut }
            case EPIPE, ECONNRESET: throw .closed
            default: throw .io("send: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Hands what has arrived to `body`, in pieces as received, until
    /// nothing more waits (or `receiveLimit` bytes were taken). Throws
    /// `.closed` once the peer closed.
    public func receive(_ body: (UnsafeRawBufferPointer) -> Void) throws(FrameError) {
        var taken = 0
        while taken < receiveLimit {
            let count = recv(fd, incoming.baseAddress, incoming.count, Int32(MSG_DONTWAIT))
            if count == 0 { throw .closed }
            if count < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN: return
                case ECONNRESET: throw .closed
                default: throw .io("recv: \(String(cString: strerror(errno)))")
                }
            }
            body(UnsafeRawBufferPointer(rebasing: incoming[0..<count]))
            taken += count
            if count < incoming.count { return }
        }
    }
}
