internal import CSupport
import Glibc
import Packets

/// An fd carrying one Ethernet frame per read and per write: a tap device,
/// or a SOCK_SEQPACKET socket (vmmd's virtio-net backend, a test's
/// forwarder). Frames move in batches: a socket is read with one recvmmsg
/// and written with one sendmmsg per batch (a tap, which is no socket, one
/// read or write per frame), and the datapath queues outgoing frames during
/// a loop turn and flushes them at its end.
///
/// Reads never block (the fd is made non-blocking). A flush waits up to a
/// millisecond for room; a receiver that stays full loses the frames, as a
/// NIC with a full ring does (TCP recovers; a guest that stops reading must
/// not stop proxyd, which serves the other sides and its control requests
/// on the same thread). Once frames were lost the port does not wait again
/// until the receiver takes a frame.
final class FramePort {
    enum Outcome {
        /// This many frames were handed over (none: nothing waiting).
        case frames(Int)
        /// Closed by the other side, or failed.
        case closed(String)
    }

    static let batch = Int(COLO_DATAGRAM_BATCH)
    /// One more than the largest frame, so that a longer datagram shows.
    private static let slotSize = EthernetHeader.maximumFrameLength + 1

    let fd: Int32
    let name: String
    private let isSocket: Bool
    private let slots: UnsafeMutableRawPointer
    private var lengths = [Int](repeating: 0, count: FramePort.batch)
    /// Queued outgoing frames, back to back, and where each starts.
    private var outgoing: [UInt8] = []
    private var offsets: [Int] = []
    private var outgoingLengths: [Int] = []
    /// Datagrams longer than any Ethernet frame: counted and skipped.
    private(set) var oversized: UInt64 = 0
    /// Frames the receiver had no room for.
    private(set) var undeliverable: UInt64 = 0
    private var congested = false

    init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
        var status = stat()
        isSocket = fstat(fd, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK
        slots = .allocate(byteCount: Self.slotSize * Self.batch, alignment: 16)
        outgoing.reserveCapacity(Self.batch * 2048)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    deinit {
        slots.deallocate()
    }

    func close() {
        Glibc.close(fd)
    }

    /// Reads up to `batch` frames and hands each to `body` (valid only
    /// during the call).
    func read(_ body: (UnsafeRawBufferPointer) -> Void) -> Outcome {
        while true {
            let count = isSocket ? receiveDatagrams() : readFrames()
            if count < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN: return .frames(0)
                default: return .closed("\(name): read: \(String(cString: strerror(errno)))")
                }
            }
            var delivered = 0
            for index in 0..<count {
                let length = lengths[index]
                if length > EthernetHeader.maximumFrameLength {
                    oversized += 1
                    continue
                }
                if length == 0 {
                    // A SEQPACKET peer may send an empty datagram: end of
                    // file only when the peer has really hung up.
                    if hungUp() { return .closed("\(name): closed by the other side") }
                    continue
                }
                body(UnsafeRawBufferPointer(start: slots + index * Self.slotSize, count: length))
                delivered += 1
            }
            return .frames(delivered)
        }
    }

    /// Reads and drops the frames waiting, at most about `limit` (a sender
    /// that never stops must not hold the datapath); how many there were.
    func discardWaiting(limit: Int = 4096) -> Int {
        var discarded = 0
        while discarded < limit, case let .frames(count) = read({ _ in }), count > 0 {
            discarded += count
        }
        return discarded
    }

    /// Queues one frame for the next `flush`.
    func queue(_ frame: UnsafeRawBufferPointer) {
        offsets.append(outgoing.count)
        outgoingLengths.append(frame.count)
        outgoing.append(contentsOf: frame)
    }

    func queue(_ frame: [UInt8]) {
        frame.withUnsafeBytes { queue($0) }
    }

    /// Writes the queued frames; false when the fd is gone.
    func flush() -> Bool {
        defer {
            outgoing.removeAll(keepingCapacity: true)
            offsets.removeAll(keepingCapacity: true)
            outgoingLengths.removeAll(keepingCapacity: true)
        }
        var next = 0
        var waited = false
        while next < offsets.count {
            let sent = isSocket ? sendDatagrams(from: next) : writeFrame(next)
            if sent >= 0 {
                next += sent
                congested = false
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN, ENOBUFS:
                guard !congested, !waited, waitWritable() else {
                    congested = true
                    undeliverable += UInt64(offsets.count - next)
                    return true
                }
                waited = true
            // A frame the other side refuses (a tap refuses runts) is its
            // verdict on that frame, not the end of the port.
            case EINVAL, EMSGSIZE: next += 1
            default: return false
            }
        }
        return true
    }

    private func receiveDatagrams() -> Int {
        lengths.withUnsafeMutableBufferPointer {
            Int(colo_receive_datagrams(fd, slots.assumingMemoryBound(to: UInt8.self), Self.slotSize,
                                       UInt32(Self.batch), $0.baseAddress))
        }
    }

    /// A tap: one read per frame, until the batch is full or nothing waits.
    private func readFrames() -> Int {
        var count = 0
        while count < Self.batch {
            let length = Glibc.read(fd, slots + count * Self.slotSize, Self.slotSize)
            if length < 0 { return count > 0 ? count : -1 }
            lengths[count] = length
            count += 1
            if length == 0 { break }
        }
        return count
    }

    private func sendDatagrams(from first: Int) -> Int {
        let count = UInt32(min(offsets.count - first, Self.batch))
        return outgoing.withUnsafeBufferPointer { bytes in
            offsets.withUnsafeBufferPointer { offsets in
                outgoingLengths.withUnsafeBufferPointer { lengths in
                    Int(colo_send_datagrams(fd, bytes.baseAddress, offsets.baseAddress! + first,
                                            lengths.baseAddress! + first, count))
                }
            }
        }
    }

    private func writeFrame(_ index: Int) -> Int {
        let written = outgoing.withUnsafeBytes { bytes in
            Glibc.write(fd, bytes.baseAddress! + offsets[index], outgoingLengths[index])
        }
        return written < 0 ? -1 : 1
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
