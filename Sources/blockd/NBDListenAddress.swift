import ArgumentParser
import Glibc

/// Where blockd serves plain (unauthenticated) NBD for local tools:
/// `unix:PATH`, or `tcp:127.0.0.1:PORT` (loopback only: anything reachable
/// from the network must go through the authenticated replication link).
struct NBDListenAddress: ExpressibleByArgument, Sendable {
    enum Kind: Sendable { case unix(String), tcp(port: UInt16) }
    let kind: Kind

    init?(argument: String) {
        if argument.hasPrefix("unix:") {
            let path = String(argument.dropFirst(5))
            guard !path.isEmpty, path.utf8.count < 108 else { return nil }
            kind = .unix(path)
        } else if argument.hasPrefix("tcp:127.0.0.1:"), let port = UInt16(argument.dropFirst(14)) {
            kind = .tcp(port: port)
        } else {
            return nil
        }
    }

    var description: String {
        switch kind {
        case .unix(let path): return "unix:\(path)"
        case .tcp(let port): return "tcp:127.0.0.1:\(port)"
        }
    }

    /// Binds and listens (before the sandbox is installed).
    func listen() throws(BlockdError) -> Int32 {
        switch kind {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw .configuration("socket: errno \(errno)") }
            unlink(path)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard bound == 0, Glibc.listen(fd, 64) == 0 else {
                let error = errno
                close(fd)
                throw .configuration("cannot listen on \(description): errno \(error)")
            }
            return fd
        case .tcp(let port):
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw .configuration("socket: errno \(errno)") }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0, Glibc.listen(fd, 64) == 0 else {
                let error = errno
                close(fd)
                throw .configuration("cannot listen on \(description): errno \(error)")
            }
            return fd
        }
    }
}

/// Why blockd cannot start or serve a request.
enum BlockdError: Error, CustomStringConvertible {
    case configuration(String)

    var description: String {
        switch self {
        case .configuration(let detail): return detail
        }
    }
}
