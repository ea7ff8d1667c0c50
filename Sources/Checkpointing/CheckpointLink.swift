import Glibc
import PeerAuthentication
import RAMStream
import Synchronization

/// The authenticated channels of one pairing: the control channel and the
/// page channels, each checked with the pre-shared key under its own
/// channel name before a byte of checkpoint data is read from it.
public struct CheckpointLink: Sendable {
    public let control: PeerSocket
    public let pages: [PeerSocket]

    public static let controlChannel = "checkpoint-control"
    public static func pageChannel(_ index: Int) -> String { "checkpoint-ram-\(index)" }
    public static let maxPageChannels = 16

    /// Authenticates every fd in order (control, then ram-0, ram-1, ...; the
    /// peer does the same) and exchanges hellos. The primary is the
    /// initiator. On failure every fd is closed.
    public static func establish(controlFD: Int32, pageFDs: [Int32], primary: Bool, key: PeerKey,
                                 memoryBytes: Int, timeout: Duration) throws(CheckpointError) -> CheckpointLink {
        let all = [controlFD] + pageFDs
        func closeAll() { all.forEach { _ = Glibc.close($0) } }
        guard (1...maxPageChannels).contains(pageFDs.count) else {
            closeAll()
            throw .invalidArgument("\(pageFDs.count) page channels (1...\(maxPageChannels) allowed)")
        }
        let role: PeerAuthenticator.Role = primary ? .initiator : .responder
        var sockets: [PeerSocket] = []
        for (index, fd) in all.enumerated() {
            let name = index == 0 ? controlChannel : pageChannel(index - 1)
            do {
                sockets.append(try PeerSocket(adopting: fd, timeout: timeout))
            } catch {
                closeAll()
                throw .invalidArgument("\(name): \(error)")
            }
            do {
                _ = try PeerAuthenticator.authenticate(fd: fd, role: role, channel: name, key: key, timeout: timeout)
            } catch {
                closeAll()
                throw .authentication(channel: name, error)
            }
        }
        let link = CheckpointLink(control: sockets[0], pages: Array(sockets.dropFirst()))
        let own = ControlFrame.Hello(memoryBytes: UInt64(memoryBytes), pageChannels: UInt32(pageFDs.count),
                                     committedSequence: 0)
        do {
            try link.control.send(.hello(own))
            let frame = try link.control.receiveControlFrame(idle: false)
            switch frame {
            case let .hello(peer) where peer == own:
                return link
            case let .hello(peer):
                let problem = "this side has \(own.memoryBytes) bytes of RAM and \(own.pageChannels) page channels, "
                    + "the peer \(peer.memoryBytes) and \(peer.pageChannels) (page size \(peer.pageSize))"
                try? link.control.send(.error(problem))
                throw RAMStreamError.mismatch(problem)
            case let .error(message):
                throw RAMStreamError.peerError(message)
            default:
                throw RAMStreamError.badFrame("expected a hello")
            }
        } catch {
            closeAll()
            throw .linkFailed("\(controlChannel): \(error)")
        }
    }

    /// Wakes every thread blocked on a channel; they see the link closed.
    public func shutdown() {
        control.shutdown()
        pages.forEach { $0.shutdown() }
    }

    public func close() {
        control.close()
        pages.forEach { $0.close() }
    }
}

/// A link shared by a pairing's threads. Its fds are closed by the last
/// thread to leave, and their numbers may then be reused at once by the
/// next pairing's fds: so every use that may come late (an error frame, a
/// shutdown from another thread, a control frame from a request) goes
/// through here, and does nothing once the fds are closed. Also keeps
/// control frames sent from several threads from interleaving.
final class GuardedLink: Sendable {
    let link: CheckpointLink
    private let open = Mutex(true)

    init(_ link: CheckpointLink) {
        self.link = link
    }

    func sendControl(_ frame: ControlFrame) throws(RAMStreamError) {
        let bytes = frame.encoded()
        try open.withLock { (open) throws(RAMStreamError) in
            guard open else { throw .closed }
            try link.control.send(bytes)
        }
    }

    /// Tells the peer why (when there is a reason) and wakes every thread
    /// blocked on a channel.
    func abort(telling reason: String?) {
        open.withLock { open in
            guard open else { return }
            if let reason { try? link.control.send(ControlFrame.error(reason).encoded()) }
            link.shutdown()
        }
    }

    /// Closes the fds; called by the last thread using them.
    func close() {
        open.withLock { open in
            guard open else { return }
            link.close()
            open = false
        }
    }
}
