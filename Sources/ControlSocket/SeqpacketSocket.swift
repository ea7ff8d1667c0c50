internal import CSupport
import Durations
import Glibc
import SystemPackage

/// The peer process at the other end of a Unix socket, as the kernel saw it
/// when the connection was made (SO_PEERCRED). Daemons decide whom to serve
/// from this, never from anything the peer says about itself.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// One datagram as received: its bytes, the fds that came with it, and
/// whether the kernel had to cut either (a cut datagram is never processed).
public struct ReceivedDatagram: Sendable {
    public var bytes: [UInt8]
    public var fds: [FileDescriptor]
    /// The datagram was longer than the receive buffer (MSG_TRUNC).
    public var truncated: Bool
    /// More fds arrived than the control buffer holds; the kernel closed the
    /// rest (MSG_CTRUNC).
    public var fdsTruncated: Bool
}

/// A connected or listening AF_UNIX SOCK_SEQPACKET socket.
///
/// SEQPACKET keeps message boundaries (one protobuf envelope per datagram, no
/// framing of our own) and is connection-oriented (peer credentials, EOF when
/// the peer goes). Every call retries on EINTR and reports failures as
/// `ControlSocketError`.
public struct SeqpacketSocket: Sendable {
    public let fd: FileDescriptor

    /// Adopts an fd that already is a SEQPACKET socket (from systemd's socket
    /// activation, from a socketpair, or received over another socket).
    public init(adopting fd: FileDescriptor) {
        self.fd = fd
    }

    /// The largest number of fds one datagram may carry; the control buffer
    /// is sized for this, and the kernel closes any beyond it.
    public static let maxFdsPerDatagram = 16

    /// Creates a listening socket bound at `path`, replacing a stale socket
    /// file left by an earlier run (never any other kind of file).
    public static func listen(at path: String, backlog: Int32 = 64) throws(ControlSocketError) -> SeqpacketSocket {
        var address = try UnixAddress(path: path)
        var status = stat()
        if lstat(path, &status) == 0 {
            guard (status.st_mode & S_IFMT) == S_IFSOCK else {
                throw .system(operation: "bind \(path): a file that is not a socket is in the way", errno: .fileExists)
            }
            unlink(path)
        }
        let socket = try makeSocket()
        do throws(ControlSocketError) {
            try address.withSockaddr { pointer, length throws(ControlSocketError) in
                guard bind(socket.fd.rawValue, pointer, length) == 0 else {
                    throw .system(operation: "bind \(path)", errno: Errno(rawValue: errno))
                }
            }
            guard Glibc.listen(socket.fd.rawValue, backlog) == 0 else {
                throw .system(operation: "listen \(path)", errno: Errno(rawValue: errno))
            }
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// Connects to the listening socket at `path`.
    public static func connect(to path: String) throws(ControlSocketError) -> SeqpacketSocket {
        var address = try UnixAddress(path: path)
        let socket = try makeSocket()
        do throws(ControlSocketError) {
            try address.withSockaddr { pointer, length throws(ControlSocketError) in
                while Glibc.connect(socket.fd.rawValue, pointer, length) != 0 {
                    let error = Errno(rawValue: errno)
                    if error == .interrupted { continue }
                    throw .system(operation: "connect \(path)", errno: error)
                }
            }
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// A connected pair, for handing one end to another process.
    public static func pair() throws(ControlSocketError) -> (SeqpacketSocket, SeqpacketSocket) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw .system(operation: "socketpair", errno: Errno(rawValue: errno))
        }
        return (SeqpacketSocket(adopting: FileDescriptor(rawValue: fds[0])),
                SeqpacketSocket(adopting: FileDescriptor(rawValue: fds[1])))
    }

    private static func makeSocket() throws(ControlSocketError) -> SeqpacketSocket {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(operation: "socket", errno: Errno(rawValue: errno)) }
        return SeqpacketSocket(adopting: FileDescriptor(rawValue: fd))
    }

    /// Accepts one connection (the listening socket must be readable, or this
    /// blocks).
    public func accept() throws(ControlSocketError) -> SeqpacketSocket {
        while true {
            let client = colo_accept_cloexec(fd.rawValue)
            if client >= 0 { return SeqpacketSocket(adopting: FileDescriptor(rawValue: client)) }
            let error = Errno(rawValue: errno)
            if error == .interrupted { continue }
            throw .system(operation: "accept", errno: error)
        }
    }

    /// The credentials of the connected peer.
    public func peerCredentials() throws(ControlSocketError) -> PeerCredentials {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        guard colo_peer_credentials(fd.rawValue, &pid, &uid, &gid) == 0 else {
            throw .system(operation: "getsockopt(SO_PEERCRED)", errno: Errno(rawValue: errno))
        }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    /// Bounds how long one send may block on a peer that does not read, so a
    /// stuck client can never stall a daemon.
    public func setSendTimeout(_ timeout: Duration) throws(ControlSocketError) {
        var value = timeval(duration: timeout)
        guard setsockopt(fd.rawValue, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            throw .system(operation: "setsockopt(SO_SNDTIMEO)", errno: Errno(rawValue: errno))
        }
    }

    /// Sends one datagram with `fds` attached as SCM_RIGHTS. The fds stay
    /// open in this process: the kernel gives the peer its own copies.
    public func send(_ bytes: [UInt8], fds: [FileDescriptor] = []) throws(ControlSocketError) {
        guard fds.count <= Self.maxFdsPerDatagram else { throw .tooManyFds(fds.count) }
        let controlLength = fds.isEmpty ? 0 : colo_cmsg_space(fds.count * MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: controlLength)
        var bytes = bytes
        let sent = Self.withMessageHeader(payload: &bytes, control: &control) { message in
            if !fds.isEmpty {
                let header = colo_cmsg_firsthdr(&message)!
                header.pointee.cmsg_level = SOL_SOCKET
                header.pointee.cmsg_type = Int32(SCM_RIGHTS)
                header.pointee.cmsg_len = colo_cmsg_len(fds.count * MemoryLayout<Int32>.size)
                let data = UnsafeMutableRawPointer(colo_cmsg_data(header)!)
                for (index, descriptor) in fds.enumerated() {
                    data.storeBytes(of: descriptor.rawValue, toByteOffset: index * 4, as: Int32.self)
                }
            }
            while true {
                let result = sendmsg(fd.rawValue, &message, Int32(MSG_NOSIGNAL))
                if result >= 0 || errno != EINTR { return result }
            }
        }
        guard sent >= 0 else {
            let error = Errno(rawValue: errno)
            if error == .wouldBlock { throw .timedOut(operation: "send") }
            if error == .brokenPipe || error == .connectionReset { throw .disconnected }
            throw .system(operation: "sendmsg", errno: error)
        }
    }

    /// Receives one datagram of at most `maxBytes`. Returns nil at EOF (the
    /// peer closed). Received fds are close-on-exec.
    public func receive(maxBytes: Int) throws(ControlSocketError) -> ReceivedDatagram? {
        // One byte more than allowed, so an oversized datagram shows as
        // MSG_TRUNC instead of passing as exactly maxBytes.
        var buffer = [UInt8](repeating: 0, count: maxBytes + 1)
        let controlLength = colo_cmsg_space(Self.maxFdsPerDatagram * MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: controlLength)
        var flags: Int32 = 0
        var fds: [FileDescriptor] = []
        let received = Self.withMessageHeader(payload: &buffer, control: &control) { message in
            var result: Int
            repeat {
                result = recvmsg(fd.rawValue, &message, Int32(MSG_CMSG_CLOEXEC))
            } while result < 0 && errno == EINTR
            guard result >= 0 else { return result }
            flags = message.msg_flags
            var header = colo_cmsg_firsthdr(&message)
            while let current = header {
                if current.pointee.cmsg_level == SOL_SOCKET && current.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                    let payloadLength = Int(current.pointee.cmsg_len) - colo_cmsg_len(0)
                    let data = UnsafeRawPointer(colo_cmsg_data(current)!)
                    for index in 0..<(payloadLength / MemoryLayout<Int32>.size) {
                        let raw = data.loadUnaligned(fromByteOffset: index * 4, as: Int32.self)
                        fds.append(FileDescriptor(rawValue: raw))
                    }
                }
                header = colo_cmsg_nxthdr(&message, current)
            }
            return result
        }
        guard received >= 0 else {
            let error = Errno(rawValue: errno)
            if error == .connectionReset { return nil }
            throw .system(operation: "recvmsg", errno: error)
        }
        if received == 0 && fds.isEmpty { return nil }
        let truncated = (flags & Int32(MSG_TRUNC)) != 0
        buffer.removeSubrange(min(received, maxBytes)...)
        return ReceivedDatagram(bytes: buffer, fds: fds, truncated: truncated,
                                fdsTruncated: (flags & Int32(MSG_CTRUNC)) != 0)
    }

    /// Waits until the socket is readable or `wakeup` is, for at most
    /// `timeout` (nil waits without limit). Returns which became ready.
    public func waitReadable(orWakeup wakeup: FileDescriptor?, timeout: Duration?) throws(ControlSocketError) -> Readiness {
        var entries = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
        if let wakeup { entries.append(pollfd(fd: wakeup.rawValue, events: Int16(POLLIN), revents: 0)) }
        let milliseconds: Int32 = timeout.map { Int32(clamping: max(0, $0.millisecondsRoundedUp)) } ?? -1
        while true {
            let result = poll(&entries, nfds_t(entries.count), milliseconds)
            if result < 0 {
                if errno == EINTR { continue }
                throw .system(operation: "poll", errno: Errno(rawValue: errno))
            }
            if result == 0 { return .timedOut }
            if entries.count > 1 && entries[1].revents != 0 { return .wakeup }
            return .readable
        }
    }

    public enum Readiness: Sendable { case readable, wakeup, timedOut }

    /// Runs `body` with a msghdr whose one iovec covers `payload` and whose
    /// control buffer is `control` (none when empty).
    private static func withMessageHeader(payload: inout [UInt8], control: inout [UInt8],
                                          _ body: (inout msghdr) -> Int) -> Int {
        let controlLength = control.count
        return payload.withUnsafeMutableBytes { payloadBuffer in
            control.withUnsafeMutableBytes { controlBuffer in
                var vector = iovec(iov_base: payloadBuffer.baseAddress, iov_len: payloadBuffer.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    if controlLength > 0 {
                        message.msg_control = controlBuffer.baseAddress
                        message.msg_controllen = controlLength
                    }
                    return body(&message)
                }
            }
        }
    }

    public func close() {
        _ = try? fd.close()
    }
}

/// A sockaddr_un for a filesystem path.
struct UnixAddress {
    private var storage = sockaddr_un()

    init(path: String) throws(ControlSocketError) {
        storage.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { throw .addressTooLong(path) }
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
    }

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(ControlSocketError) -> R) throws(ControlSocketError) -> R {
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        return try withUnsafePointer(to: &storage) { pointer throws(ControlSocketError) -> R in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address throws(ControlSocketError) -> R in
                try body(address, length)
            }
        }
    }
}


extension timeval {
    init(duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}
