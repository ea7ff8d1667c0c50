import Glibc
import Synchronization

/// Length-prefixed frames on a connected stream socket: the framing of the
/// links between the two hosts (supervisord's control channel, proxyd's
/// packet link), a 4-byte big-endian length then the payload.
///
/// Every read and write has a deadline, and a frame longer than
/// `maxFrameBytes` is refused before a byte of it is buffered: a peer that
/// lies about a length costs a closed connection, not memory.
public final class FrameStream: Sendable {
    public let fd: Int32
    public let maxFrameBytes: Int
    private let sendLock = Mutex(())
    private let receiveLock = Mutex(())

    public init(fd: Int32, maxFrameBytes: Int = 1 << 20) {
        self.fd = fd
        self.maxFrameBytes = maxFrameBytes
    }

    /// Sends one frame. Frames from several threads never interleave.
    public func send(_ payload: [UInt8], timeout: Duration = .seconds(5)) throws(FrameError) {
        guard payload.count <= maxFrameBytes else { throw .tooLarge(payload.count, limit: maxFrameBytes) }
        let length = UInt32(payload.count)
        let frame = [UInt8(length >> 24), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
            + payload
        let deadline = ContinuousClock.now.advanced(by: timeout)
        try sendLock.withLock { _ throws(FrameError) in
            try writeAll(frame, deadline: deadline)
        }
    }

    /// Receives one frame; nil when the peer closed cleanly between frames.
    public func receive(timeout: Duration?) throws(FrameError) -> [UInt8]? {
        let deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
        return try receiveLock.withLock { _ throws(FrameError) -> [UInt8]? in
            guard let header = try readExactly(4, deadline: deadline, eofAllowed: true) else { return nil }
            let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
            guard length <= maxFrameBytes else { throw .tooLarge(length, limit: maxFrameBytes) }
            return try readExactly(length, deadline: deadline, eofAllowed: false) ?? []
        }
    }

    /// Ends the conversation both ways; the fd stays open for its owner.
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    private func writeAll(_ bytes: [UInt8], deadline: ContinuousClock.Instant) throws(FrameError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if written >= 0 {
                offset += written
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN: try wait(for: Int16(POLLOUT), deadline: deadline)
            case EPIPE, ECONNRESET: throw .closed
            default: throw .io("send: \(String(cString: strerror(errno)))")
            }
        }
    }

    private func readExactly(_ count: Int, deadline: ContinuousClock.Instant?, eofAllowed: Bool)
        throws(FrameError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = bytes[offset...].withUnsafeMutableBytes {
                recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
            }
            if received > 0 {
                offset += received
                continue
            }
            if received == 0 {
                if offset == 0 && eofAllowed { return nil }
                throw .truncated
            }
            switch errno {
            case EINTR: continue
            case EAGAIN: try wait(for: Int16(POLLIN), deadline: deadline)
            case ECONNRESET: throw .closed
            default: throw .io("recv: \(String(cString: strerror(errno)))")
            }
        }
        return bytes
    }

    private func wait(for events: Int16, deadline: ContinuousClock.Instant?) throws(FrameError) {
        var entry = pollfd(fd: fd, events: events, revents: 0)
        while true {
            var milliseconds: Int32 = -1
            if let deadline {
                let remaining = deadline - .now
                guard remaining > .zero else { throw .timedOut }
                let (seconds, attoseconds) = remaining.components
                milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            }
            let result = poll(&entry, 1, milliseconds)
            if result > 0 { return }
            if result < 0 && errno != EINTR { throw .io("poll: \(String(cString: strerror(errno)))") }
        }
    }
}

/// Why a frame could not be sent or received. All but `timedOut` end the
/// connection.
public enum FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    case tooLarge(Int, limit: Int)
    /// The peer closed in the middle of a frame.
    case truncated
    case closed
    case timedOut
    case io(String)

    public var description: String {
        switch self {
        case let .tooLarge(size, limit): return "frame of \(size) bytes exceeds the limit of \(limit)"
        case .truncated: return "the peer closed in the middle of a frame"
        case .closed: return "the peer closed the connection"
        case .timedOut: return "timed out"
        case let .io(detail): return detail
        }
    }
}
