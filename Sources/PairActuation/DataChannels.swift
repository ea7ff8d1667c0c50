import Durations
import Glibc
import PairConfiguration
import PeerLink
import SystemPackage

/// The connections a sync opens between the two hosts besides the
/// supervisors' own link, each authenticated later by the daemon that
/// serves it (PeerAuthentication; the primary is the initiator).
struct DataChannels: Sendable {
    static let checkpointControl = "checkpoint-control"
    static func checkpointPages(_ index: Int) -> String { "checkpoint-ram-\(index)" }
    static let disk = "nbd"
    static let frames = "proxyd-frames"

    static func names(pageChannels: Int) -> [String] {
        [checkpointControl] + (0..<pageChannels).map(checkpointPages) + [disk, frames]
    }

    let checkpointControl: FileDescriptor
    let checkpointPages: [FileDescriptor]
    let disk: FileDescriptor
    let frames: FileDescriptor

    init(byName fds: [String: FileDescriptor], pageChannels: Int) {
        checkpointControl = fds[Self.checkpointControl]!
        checkpointPages = (0..<pageChannels).map { fds[Self.checkpointPages($0)]! }
        disk = fds[Self.disk]!
        frames = fds[Self.frames]!
    }

    /// The primary dials every channel to the peer's one port.
    static func dial(_ peer: SocketAddress, pageChannels: Int) throws(ActuationError) -> DataChannels {
        var fds: [String: FileDescriptor] = [:]
        for name in names(pageChannels: pageChannels) {
            do {
                let fd = try TCPConnection.connect(to: peer, timeout: .seconds(5))
                fds[name] = FileDescriptor(rawValue: fd)
                try ChannelRoute.announce(name, on: fd)
            } catch {
                fds.values.forEach { try? $0.close() }
                throw .peer("cannot open the \(name) channel to \(peer): \(error)")
            }
        }
        return DataChannels(byName: fds, pageChannels: pageChannels)
    }

    /// The secondary takes what the primary dialled.
    static func take(from mailbox: PeerMailbox, pageChannels: Int, timeout: Duration) throws(ActuationError) -> DataChannels {
        var fds: [String: FileDescriptor] = [:]
        for name in names(pageChannels: pageChannels) {
            do {
                fds[name] = FileDescriptor(rawValue: try mailbox.connection(name, timeout: timeout))
            } catch {
                fds.values.forEach { try? $0.close() }
                throw error
            }
        }
        return DataChannels(byName: fds, pageChannels: pageChannels)
    }
}
