import Glibc
import Packets

/// An fd carrying one Ethernet frame per read and per write: a tap device,
/// or a SOCK_SEQPACKET socket (vmmd's virtio-net backend, a test's
/// forwarder). Reads never block (the fd is made non-blocking). A write
/// waits up to a millisecond for room; a receiver that stays full loses the
/// frame, as a NIC with a full ring does (TCP recovers; a guest that stops
/// reading must not stop proxyd, which serves the other sides and its
/// control requests on the same thread). Once a frame was lost the port
/// does not wait again until the receiver takes a frame.
final class FramePort {
    enum Outcome {
        case frame([UInt8])
        case empty
        /// Closed by the other side, or failed.
        case closed(String)
    }

    let fd: Int32
    let name: String
    private var buffer = [UInt8](repeating: 0, count: EthernetHeader.maximumFrameLength + 1)
    /// Datagrams longer than any Ethernet frame: counted and skipped.
    private(set) var oversized: UInt64 = 0
    /// Frames the receiver had no room for.
    private(set) var undeliverable: UInt64 = 0
    private var congested = false

    init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    func close() {
        Glibc.close(fd)
    }

    func read() -> Outcome {
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                if count > EthernetHeader.maximumFrameLength {
                    oversized += 1
                    continue
                }
                return .frame(Array(buffer[0..<count]))
            }
            if count == 0 {
                // A SEQPACKET peer may send an empty datagram: end of file
                // only when the peer has really hung up.
                guard hungUp() else { continue }
                return .closed("\(name): closed by the other side")
            }
            switch errno {
            case EINTR: continue
            case EAGAIN: return .empty
            default: return .closed("\(name): read: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Writes one frame; false when the fd is gone.
    func write(_ frame: [UInt8]) -> Bool {
        var waited = false
        while true {
            let count = frame.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if count >= 0 {
                congested = false
                return true
            }
            switch errno {
            case EINTR: continue
            case EAGAIN, ENOBUFS:
                guard !congested, !waited, waitWritable() else {
                    congested = true
                    undeliverable += 1
                    return true
                }
                waited = true
            // A frame the other side refuses (a tap refuses runts) is its
            // verdict on that frame, not the end of the port.
            case EINVAL, EMSGSIZE: return true
            default: return false
            }
        }
    }

    private func hungUp() -> Bool {
        let peerClosedWriting: Int16 = 0x2000           // POLLRDHUP, a _GNU_SOURCE name
        var entry = pollfd(fd: fd, events: Int16(POLLIN) | peerClosedWriting, revents: 0)
        guard poll(&entry, 1, 0) > 0 else { return false }
        return entry.revents & (Int16(POLLHUP) | peerClosedWriting) != 0
    }

    private func waitWritable() -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        return poll(&entry, 1, 1) > 0
    }
}
