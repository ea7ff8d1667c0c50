internal import CSupport
import FrameLink
import Glibc
import PeerAuthentication

/// The TCP connection to the other host's proxyd, once authenticated: a
/// frame stream each way (FrameLink). Outgoing records are gathered in a
/// buffer and sent once per loop turn, so a burst of frames costs one send.
final class PeerFrameLink {
    static let channel = "proxyd-frames"

    let fd: Int32
    private var reader = FrameStreamReader()
    private var outgoing: [UInt8] = []
    private var receiveBuffer = [UInt8](repeating: 0, count: 256 * 1024)

    /// Authenticates the connected socket `fd` and sends the stream header.
    init(fd: Int32, role: PeerAuthenticator.Role, key: PeerKey) throws(PeerAuthenticationError) {
        self.fd = fd
        _ = try PeerAuthenticator.authenticate(fd: fd, role: role, channel: Self.channel, key: key)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        outgoing = FrameStream.header()
    }

    func close() {
        Glibc.close(fd)
    }

    func queue(_ frame: [UInt8], timestamp: UInt64) {
        FrameStream.appendRecord(frame, timestamp: timestamp, to: &outgoing)
    }

    func queueCheckpointMark(timestamp: UInt64) {
        FrameStream.appendCheckpointMark(timestamp: timestamp, to: &outgoing)
    }

    /// Sends everything queued. Throws a reason when the link is gone.
    func flush() throws(LinkFailure) {
        var offset = 0
        defer {
            if offset == outgoing.count {
                outgoing.removeAll(keepingCapacity: true)
            } else {
                outgoing.removeFirst(offset)
            }
        }
        let flags = Int32(MSG_NOSIGNAL)
        while offset < outgoing.count {
            let sent = outgoing[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, flags) }
            if sent >= 0 {
                offset += sent
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN:
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                guard poll(&entry, 1, 5000) > 0 else { throw LinkFailure("peer link: send stalled for 5 s") }
            default:
                throw LinkFailure("peer link: send: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Reads what has arrived and hands each complete record to `body`.
    func receive(_ body: (FrameRecord) -> Void) throws(LinkFailure) {
        let flags = Int32(MSG_DONTWAIT)
        while true {
            let count = receiveBuffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, flags) }
            if count == 0 { throw LinkFailure("peer link closed by the peer") }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { return }
                throw LinkFailure("peer link: recv: \(String(cString: strerror(errno)))")
            }
            receiveBuffer.withUnsafeBytes { reader.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            do {
                while let record = try reader.next() { body(record) }
            } catch {
                throw LinkFailure("peer link: \(error)")
            }
            if count < receiveBuffer.count { return }
        }
    }
}

struct LinkFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
