/// Why a channel to the peer checkpointd failed. Any of these ends the
/// pairing: a stream that carried one bad byte cannot be trusted to be in
/// step again.
public enum RAMStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The fd handed over is not a connected TCP socket.
    case notTCP(String)
    /// A frame that does not follow the protocol.
    case badFrame(String)
    case pageOutOfRange(page: UInt64, pages: Int)
    case wrongSequence(expected: UInt64, received: UInt64)
    /// The peer closed in the middle of a frame.
    case truncated(received: Int, expected: Int)
    /// The peer closed between frames.
    case closed
    case timedOut
    /// The peer sent an error frame.
    case peerError(String)
    /// Both sides' pairing parameters differ.
    case mismatch(String)
    case system(String, Int32)

    public var description: String {
        switch self {
        case let .notTCP(detail): return "not a connected TCP socket: \(detail)"
        case let .badFrame(detail): return "garbage on the channel: \(detail)"
        case let .pageOutOfRange(page, pages): return "page \(page) is outside RAM (\(pages) pages)"
        case let .wrongSequence(expected, received):
            return "frame for checkpoint \(received) where checkpoint \(expected) was expected"
        case let .truncated(received, expected):
            return "the peer closed in the middle of a frame (\(received) of \(expected) bytes)"
        case .closed: return "the peer closed the channel"
        case .timedOut: return "the peer did not answer in time"
        case let .peerError(message): return "the peer gave up: \(message)"
        case let .mismatch(detail): return "the peers do not match: \(detail)"
        case let .system(operation, errno):
            return "\(operation): \(String(cString: strerror(errno)))"
        }
    }
}

/// An error with the channel it happened on, for logs and replies.
public struct ChannelError: Error, Sendable, Equatable, CustomStringConvertible {
    public let channel: String
    public let error: RAMStreamError

    public init(channel: String, error: RAMStreamError) {
        self.channel = channel
        self.error = error
    }

    public var description: String { "\(channel): \(error)" }
}

import Glibc
