internal import CSystemd
import Glibc
import SystemPackage

/// Sockets handed over by systemd (or `systemd-socket-activate`).
///
/// With socket activation the daemon never binds: systemd owns the socket's
/// path, mode and lifetime, queues the first connection while the daemon
/// starts, and keeps the socket across daemon restarts.
public enum SocketActivation {
    /// The listening sockets passed through `LISTEN_FDS`, if any, after
    /// checking each is an AF_UNIX SOCK_SEQPACKET listening socket. The
    /// `LISTEN_*` variables are unset so that children do not inherit them.
    public static func seqpacketListeners() throws(SystemdError) -> [FileDescriptor] {
        let count = sd_listen_fds(1)
        guard count >= 0 else { throw .call("sd_listen_fds", Errno(rawValue: -count)) }
        return try (0..<count).map { (index: Int32) throws(SystemdError) -> FileDescriptor in
            let fd = SD_LISTEN_FDS_START + index
            let check = sd_is_socket(fd, AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 1)
            guard check > 0 else { throw .unexpectedSocket(fd: fd) }
            return FileDescriptor(rawValue: fd)
        }
    }
}

/// A systemd interface call that failed.
public enum SystemdError: Error, Sendable, CustomStringConvertible {
    case call(String, Errno)
    case unexpectedSocket(fd: Int32)

    public var description: String {
        switch self {
        case let .call(name, errno): return "\(name): \(errno)"
        case let .unexpectedSocket(fd):
            return "socket activation handed over fd \(fd), which is not a listening AF_UNIX SOCK_SEQPACKET socket"
        }
    }
}
