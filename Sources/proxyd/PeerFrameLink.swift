import FrameLink
import PeerAuthentication
import PeerLink

/// The TCP connection to the other host's proxyd, once authenticated: a
/// frame stream each way (FrameLink's records) over PeerLink's
/// ``BatchedStream``, so the records of a loop turn leave in one send.
final class PeerFrameLink {
    static let channel = "proxyd-frames"

    private let stream: BatchedStream
    private var reader = FrameStreamReader()
    var fd: Int32 { stream.fd }

    /// Authenticates the connected socket `fd` and queues the stream header.
    init(fd: Int32, role: PeerAuthenticator.Role, key: PeerKey) throws(LinkFailure) {
        do {
            try TCPConnection.tune(fd)
        } catch {
            throw LinkFailure("peer link: \(error)")
        }
        do {
            _ = try PeerAuthenticator.authenticate(fd: fd, role: role, channel: Self.channel, key: key)
        } catch {
            throw LinkFailure("authentication: \(error)")
        }
        stream = BatchedStream(fd: fd)
        stream.outgoing = FrameLink.FrameStream.header()
    }

    func close() {
        stream.close()
    }

    func queue(_ frame: [UInt8], timestamp: UInt64) {
        FrameLink.FrameStream.appendRecord(frame, timestamp: timestamp, to: &stream.outgoing)
    }

    func queue(_ frame: UnsafeRawBufferPointer, timestamp: UInt64) {
        FrameLink.FrameStream.appendRecord(frame, timestamp: timestamp, to: &stream.outgoing)
    }

    func queueCheckpointMark(timestamp: UInt64) {
        FrameLink.FrameStream.appendCheckpointMark(timestamp: timestamp, to: &stream.outgoing)
    }

    /// Sends everything queued. Throws a reason when the link is gone.
    func flush() throws(LinkFailure) {
        do {
            try stream.flush()
        } catch {
            throw LinkFailure("peer link: send: \(error)")
        }
    }

    /// Reads what has arrived and hands each complete record to `body`.
    func receive(_ body: (FrameRecord) -> Void) throws(LinkFailure) {
        do {
            try stream.receive { reader.feed($0) }
        } catch {
            throw LinkFailure(error == .closed ? "peer link closed by the peer" : "peer link: recv: \(error)")
        }
        do {
            while let record = try reader.next() { body(record) }
        } catch {
            throw LinkFailure("peer link: \(error)")
        }
    }
}

struct LinkFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
