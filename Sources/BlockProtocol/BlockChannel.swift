import ColoProtocol
import ControlSocket
import Glibc
import SwiftProtobuf
import SystemPackage

/// Why the block data path failed.
public enum BlockChannelError: Error, Sendable, Equatable, CustomStringConvertible {
    case socket(ControlSocketError)
    /// A datagram did not decode as a BlockMessage, or broke the sequence.
    case protocolViolation(String)
    /// The peer refused the session with an `error` message.
    case refused(ColoError)
    case timedOut(String)
    /// The peer closed the socket.
    case closed

    public var description: String {
        switch self {
        case let .socket(error): return "block socket: \(error)"
        case let .protocolViolation(detail): return "block protocol violation: \(detail)"
        case let .refused(error): return "block service refused: \(error.code.name): \(error.message)"
        case let .timedOut(what): return "block service: \(what) timed out"
        case .closed: return "block service closed the connection"
        }
    }
}

/// One end of the block data path (Proto/colo/control/block.proto): one
/// `BlockMessage` per SOCK_SEQPACKET datagram, fds as SCM_RIGHTS. Both
/// vmmd and the block service frame their messages with this.
public final class BlockChannel: Sendable {
    /// Requests name at most a queue's worth of buffers: far below this.
    public static let maxDatagramBytes = 64 * 1024

    public let socket: SeqpacketSocket

    public init(socket: SeqpacketSocket) {
        self.socket = socket
    }

    public var fd: FileDescriptor { socket.fd }

    /// Sends one message (with `fds` attached).
    public func send(_ message: ColoBlockMessage, fds: [FileDescriptor] = []) throws(BlockChannelError) {
        let bytes: [UInt8]
        do { bytes = try message.serializedBytes() } catch {
            throw .protocolViolation("message did not serialize: \(error)")
        }
        do {
            try socket.send(bytes, fds: fds)
        } catch .disconnected {
            throw .closed
        } catch {
            throw .socket(error)
        }
    }

    /// The next message, or nil when none is waiting (the socket must be
    /// non-blocking for that; see `setNonBlocking`). The caller owns the fds.
    public func receive() throws(BlockChannelError) -> (ColoBlockMessage, [FileDescriptor])? {
        let datagram: ReceivedDatagram?
        do {
            datagram = try socket.receive(maxBytes: Self.maxDatagramBytes)
        } catch .system(_, let errno) where errno == .wouldBlock {
            return nil
        } catch {
            throw .socket(error)
        }
        guard let datagram else { throw .closed }
        guard !datagram.truncated, !datagram.fdsTruncated else {
            datagram.fds.forEach { try? $0.close() }
            throw .protocolViolation("a datagram larger than \(Self.maxDatagramBytes) bytes")
        }
        do {
            return (try ColoBlockMessage(serializedBytes: datagram.bytes), datagram.fds)
        } catch {
            datagram.fds.forEach { try? $0.close() }
            throw .protocolViolation("not a colo.control.BlockMessage: \(error)")
        }
    }

    /// Makes `receive` return nil instead of waiting.
    public func setNonBlocking() {
        let flags = fcntl(socket.fd.rawValue, F_GETFL)
        _ = fcntl(socket.fd.rawValue, F_SETFL, flags | O_NONBLOCK)
    }

    /// vmmd's side of the handshake: sends `attach` with the guest RAM
    /// memfd and its layout, and waits up to `timeout` for `attached`.
    public func attach(memory memfd: FileDescriptor, regions: [ColoGuestMemoryRegion],
                       timeout: Duration) throws(BlockChannelError) -> ColoBlockAttached {
        var attach = ColoBlockAttach()
        attach.guestMemory = ColoFdRef()
        attach.regions = regions
        var message = ColoBlockMessage()
        message.body = .attach(attach)
        try send(message, fds: [memfd])
        let readiness: SeqpacketSocket.Readiness
        do {
            readiness = try socket.waitReadable(orWakeup: nil, timeout: timeout)
        } catch {
            throw .socket(error)
        }
        guard readiness == .readable, let (reply, fds) = try receive() else { throw .timedOut("attach") }
        fds.forEach { try? $0.close() }
        switch reply.body {
        case .attached(let attached):
            return attached
        case .error(let error):
            throw .refused(error)
        default:
            throw .protocolViolation("expected attached, got \(String(describing: reply.body))")
        }
    }
}
