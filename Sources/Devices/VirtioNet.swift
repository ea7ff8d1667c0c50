import GuestMemory
import Glibc
import SystemPackage

/// Counters of a network device, for status replies.
public struct NetCounters: Sendable, Equatable {
    public var framesToGuest: UInt64 = 0
    public var framesFromGuest: UInt64 = 0
    /// Frames from the backend larger than the guest's buffer, dropped.
    public var framesTooLargeForGuest: UInt64 = 0
    /// Guest frames the backend could not take (closed), dropped.
    public var framesDroppedFromGuest: UInt64 = 0
}

/// virtio-net (legacy): Ethernet frames between the guest's queues and a
/// SOCK_SEQPACKET socket whose other end (proxyd, or a test's forwarder
/// to a tap) gets one frame per datagram, no header.
///
/// Receive: when the socket is readable and the guest has posted buffers,
/// a frame is received straight into the guest's buffer (after the 10-byte
/// virtio_net_hdr, zeroed: no offloads). Transmit: each chain's frame
/// (after its header) is sent from guest RAM with sendmsg. A full socket
/// leaves the chain queued until it drains; a closed one drops frames.
public final class VirtioNet: VirtioDeviceModel, @unchecked Sendable {
    static let headerLength = 10
    static let receiveQueue = 0, transmitQueue = 1
    static let featureMAC: UInt32 = 1 << 5
    /// Frames moved per wake-up before others get a turn.
    static let batch = 64

    public let pciDeviceID: UInt16 = 0x1000
    public let virtioDeviceType: UInt16 = 1
    public let pciClassCode: UInt32 = 0x02_0000
    public let deviceFeatures: UInt32 = featureMAC
    public let queueSizes: [UInt16] = [256, 256]

    public let mac: [UInt8]
    private let backend: FileDescriptor
    private var transmitBlocked = false
    private var backendClosed = false
    private var released = false
    /// Read with the transport's lock held (`VirtioPciTransport.locked`).
    public private(set) var counters = NetCounters()
    private let onEvent: @Sendable (String) -> Void
    private let interestsChanged: @Sendable () -> Void

    /// - Parameters:
    ///   - backend: the frame socket (made non-blocking here; closed with the device).
    ///   - interestsChanged: wakes the device thread (the guest posted
    ///     receive buffers, so the socket is worth reading again).
    ///   - onEvent: told when the backend goes away.
    public init(mac: [UInt8], backend: FileDescriptor, interestsChanged: @escaping @Sendable () -> Void,
                onEvent: @escaping @Sendable (String) -> Void) {
        precondition(mac.count == 6)
        self.mac = mac
        self.backend = backend
        self.interestsChanged = interestsChanged
        self.onEvent = onEvent
        let flags = fcntl(backend.rawValue, F_GETFL)
        _ = fcntl(backend.rawValue, F_SETFL, flags | O_NONBLOCK)
    }

    deinit {
        release()
    }

    public func release() {
        guard !released else { return }
        released = true
        backendClosed = true
        try? backend.close()
    }

    public func configByte(at offset: Int) -> UInt8 {
        offset < 6 ? mac[offset] : 0xFF
    }

    public func queueNotified(_ queue: Int, device: VirtioDeviceAccess) {
        if queue == Self.transmitQueue {
            transmit(device)
        } else if queue == Self.receiveQueue {
            interestsChanged()
        }
    }

    public func statusChanged(device: VirtioDeviceAccess) {
        interestsChanged()
    }

    public func reset() {
        transmitBlocked = false
    }

    public func backendInterests(device: VirtioDeviceAccess) -> [PollInterest] {
        guard !backendClosed, device.isLive else { return [] }
        var events: Int16 = 0
        if device.hasAvailable(Self.receiveQueue) { events |= Int16(POLLIN) }
        if transmitBlocked { events |= Int16(POLLOUT) }
        return events == 0 ? [] : [PollInterest(fd: backend, events: events)]
    }

    public func backendReady(fd: FileDescriptor, revents: Int16, device: VirtioDeviceAccess) {
        if revents & Int16(POLLOUT) != 0 && transmitBlocked {
            transmitBlocked = false
            transmit(device)
        }
        if revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            receive(device)
        }
    }

    private func transmit(_ device: VirtioDeviceAccess) {
        while !transmitBlocked, let chain = device.pop(Self.transmitQueue) {
            let frameLength = chain.readableLength - Self.headerLength
            guard frameLength > 0, !backendClosed else {
                counters.framesDroppedFromGuest += 1
                device.complete(Self.transmitQueue, head: chain.head, length: 0)
                continue
            }
            var vectors: [iovec]
            do {
                vectors = try GuestIO.vectors(chain.readable, skipping: Self.headerLength,
                                              memory: device.memory, forWriting: false)
            } catch {
                device.fail("transmit chain: \(error)")
                return
            }
            let sent = vectors.withUnsafeMutableBufferPointer { buffer in
                var message = msghdr()
                message.msg_iov = buffer.baseAddress
                message.msg_iovlen = buffer.count
                while true {
                    let result = sendmsg(backend.rawValue, &message, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                    if result >= 0 || errno != EINTR { return result }
                }
            }
            if sent < 0 {
                if errno == EAGAIN {
                    device.undoPop(Self.transmitQueue)
                    transmitBlocked = true
                    interestsChanged()
                    return
                }
                // EMSGSIZE drops this frame; anything else means the peer is gone.
                if errno != EMSGSIZE { closeBackend("sending a frame failed: \(Errno(rawValue: errno))") }
                counters.framesDroppedFromGuest += 1
            } else {
                counters.framesFromGuest += 1
            }
            device.complete(Self.transmitQueue, head: chain.head, length: 0)
        }
    }

    private func receive(_ device: VirtioDeviceAccess) {
        var moved = 0
        while moved < Self.batch, !backendClosed, let chain = device.pop(Self.receiveQueue) {
            guard chain.writableLength > Self.headerLength else {
                device.fail("receive buffer of \(chain.writableLength) bytes cannot hold the 10-byte header")
                return
            }
            var vectors: [iovec]
            do {
                vectors = try GuestIO.vectors(chain.writable, skipping: Self.headerLength,
                                              memory: device.memory, forWriting: true)
            } catch {
                device.fail("receive chain: \(error)")
                return
            }
            var truncated = false
            let received = vectors.withUnsafeMutableBufferPointer { buffer in
                var message = msghdr()
                message.msg_iov = buffer.baseAddress
                message.msg_iovlen = buffer.count
                while true {
                    let result = recvmsg(backend.rawValue, &message, Int32(MSG_DONTWAIT))
                    if result >= 0 || errno != EINTR {
                        truncated = message.msg_flags & Int32(MSG_TRUNC) != 0
                        return result
                    }
                }
            }
            if received <= 0 {
                device.undoPop(Self.receiveQueue)
                if received == 0 {
                    closeBackend("the frame socket's peer closed it")
                } else if errno != EAGAIN {
                    closeBackend("receiving a frame failed: \(Errno(rawValue: errno))")
                }
                return
            }
            if truncated {
                // Larger than what the guest posted: dropped, buffer reused.
                device.undoPop(Self.receiveQueue)
                counters.framesTooLargeForGuest += 1
                continue
            }
            do {
                try GuestIO.scatter([UInt8](repeating: 0, count: Self.headerLength), into: chain.writable,
                                    memory: device.memory)
            } catch {
                device.fail("receive header: \(error)")
                return
            }
            counters.framesToGuest += 1
            device.complete(Self.receiveQueue, head: chain.head, length: UInt32(Self.headerLength + received))
            moved += 1
        }
    }

    private func closeBackend(_ reason: String) {
        guard !backendClosed else { return }
        backendClosed = true
        onEvent(reason)
    }
}
