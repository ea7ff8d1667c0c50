internal import CSupport
import Glibc
import PairConfiguration

/// TCP connections between the hosts of a pair, tuned for small messages
/// that must not wait: TCP_NODELAY (no Nagle) and TCP_QUICKACK (no delayed
/// ACK), which DESIGN.md measured costing QEMU's COLO ~40 ms per checkpoint.
public enum TCPConnection {
    /// Connects to `address` within `timeout`; returns the connected fd.
    public static func connect(to address: SocketAddress, timeout: Duration) throws(FrameError) -> Int32 {
        let family = address.host.isV6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .io("socket: \(String(cString: strerror(errno)))") }
        do throws(FrameError) {
            let result = try withSockaddr(address) { Glibc.connect(fd, $0, $1) }
            if result != 0 {
                guard errno == EINPROGRESS else { throw .io("connect \(address): \(String(cString: strerror(errno)))") }
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let (seconds, attoseconds) = timeout.components
                let ready = poll(&entry, 1, Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000))
                guard ready > 0 else { throw .timedOut }
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                guard error == 0 else { throw .io("connect \(address): \(String(cString: strerror(error)))") }
            }
            try tune(fd)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// A listening socket on `address` (SO_REUSEADDR, so a restarted daemon
    /// binds again at once).
    public static func listen(on address: SocketAddress, backlog: Int32 = 16) throws(FrameError) -> Int32 {
        let family = address.host.isV6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .io("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        do throws(FrameError) {
            guard try withSockaddr(address, { bind(fd, $0, $1) }) == 0 else {
                throw .io("bind \(address): \(String(cString: strerror(errno)))")
            }
            guard Glibc.listen(fd, backlog) == 0 else { throw .io("listen: \(String(cString: strerror(errno)))") }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Accepts one connection, waiting at most `timeout` (nil: no limit).
    public static func accept(from listener: Int32, timeout: Duration?) throws(FrameError) -> Int32 {
        var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        let milliseconds = timeout.map { value -> Int32 in
            let (seconds, attoseconds) = value.components
            return Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        } ?? -1
        while true {
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { throw .timedOut }
            let fd = colo_accept_cloexec(listener)
            if fd < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw .io("accept: \(String(cString: strerror(errno)))")
            }
            do {
                try tune(fd)
            } catch {
                close(fd)
                throw error
            }
            return fd
        }
    }

    /// Blocking mode, no Nagle, no delayed ACKs: for a connection made
    /// elsewhere and handed over (proxyd's frame link).
    public static func tune(_ fd: Int32) throws(FrameError) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        var one: Int32 = 1
        for option in [TCP_NODELAY, TCP_QUICKACK] {
            guard setsockopt(fd, Int32(IPPROTO_TCP), option, &one, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
                throw .io("setsockopt: \(String(cString: strerror(errno)))")
            }
        }
    }

    private static func withSockaddr(_ address: SocketAddress,
                                     _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) throws(FrameError) -> Int32 {
        if address.host.isV6 {
            var storage = sockaddr_in6()
            storage.sin6_family = sa_family_t(AF_INET6)
            storage.sin6_port = address.port.bigEndian
            guard inet_pton(AF_INET6, address.host.text, &storage.sin6_addr) == 1 else {
                throw .io("bad IPv6 address \(address.host)")
            }
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
        var storage = sockaddr_in()
        storage.sin_family = sa_family_t(AF_INET)
        storage.sin_port = address.port.bigEndian
        guard inet_pton(AF_INET, address.host.text, &storage.sin_addr) == 1 else {
            throw .io("bad IPv4 address \(address.host)")
        }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
