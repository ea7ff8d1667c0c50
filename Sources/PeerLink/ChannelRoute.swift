/// The one frame a dialling host sends first on every connection to its
/// peer's single port, naming what the connection is for ("supervisor",
/// "checkpoint-control", "checkpoint-ram-0", "nbd", "proxyd-frames"), so
/// the accepting supervisord can hand it to the daemon that serves it.
///
/// The name only routes: nothing is trusted before the daemon that takes
/// the connection has authenticated it (PeerAuthentication binds the same
/// channel name into its proof). Announcing at connect time, rather than
/// reading the daemons' own hellos, keeps routing independent of the order
/// in which the daemons start their handshakes.
public enum ChannelRoute {
    static let magic = Array("COLOROUTE1 ".utf8)
    static let maxNameBytes = 64

    /// Sends the route frame for `channel` on a freshly connected socket.
    public static func announce(_ channel: String, on fd: Int32, timeout: Duration = .seconds(2)) throws(FrameError) {
        try FrameStream(fd: fd, maxFrameBytes: magic.count + maxNameBytes).send(magic + Array(channel.utf8), timeout: timeout)
    }

    /// Reads the route frame of an accepted socket; the socket is left at
    /// the first byte after it.
    public static func read(from fd: Int32, timeout: Duration = .seconds(2)) throws(FrameError) -> String {
        guard let frame = try FrameStream(fd: fd, maxFrameBytes: magic.count + maxNameBytes).receive(timeout: timeout) else {
            throw .closed
        }
        guard frame.count > magic.count, Array(frame.prefix(magic.count)) == magic else {
            throw .io("not a colo connection: no route frame")
        }
        let name = frame.dropFirst(magic.count)
        guard name.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { throw .io("channel name is not printable ASCII") }
        return String(decoding: name, as: UTF8.self)
    }
}
