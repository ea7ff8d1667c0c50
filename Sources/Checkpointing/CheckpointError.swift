import Durations
import PeerAuthentication
import RAMStream

/// Why a replication request failed.
public enum CheckpointError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The request's input is unusable (a bitmap of the wrong size, a memfd
    /// that is not sealed); nothing was sent or changed.
    case invalidArgument(String)
    /// The request does not fit the current state (commit on a primary, a
    /// round during a checkpoint).
    case wrongState(String)
    /// A channel did not authenticate: wrong key, wrong channel, not a peer.
    case authentication(channel: String, PeerAuthenticationError)
    /// The link to the peer failed, now or earlier; the pairing is over.
    case linkFailed(String)

    public var description: String {
        switch self {
        case let .invalidArgument(detail): return detail
        case let .wrongState(detail): return detail
        case let .authentication(channel, error): return "\(channel): \(error)"
        case let .linkFailed(detail): return "link to the peer failed: \(detail)"
        }
    }
}

/// Settings of one pairing.
public struct ReplicationOptions: Sendable {
    /// Hash RAM on both sides at every commit.
    public var verify: Bool
    /// Every wait on the peer.
    public var peerTimeout: Duration
    /// Threads for the commit copy and the verify hashes.
    public var threads: Int
    /// Live migration: advise stop-and-copy once a round this small could be
    /// sent within this downtime.
    public var maxDowntime: Duration
    /// Live migration: advise stop-and-copy after this many rounds.
    public var maxRounds: Int
    /// Secondary: the SVM is a migration target that does not run before
    /// the first commit, so pages go straight into its RAM too until then.
    public var incoming: Bool

    public init(verify: Bool = false, peerTimeout: Duration = .seconds(5), threads: Int = availableCPUs(),
                maxDowntime: Duration = .milliseconds(100), maxRounds: Int = 30, incoming: Bool = false) {
        self.incoming = incoming
        self.verify = verify
        self.peerTimeout = peerTimeout
        self.threads = max(1, threads)
        self.maxDowntime = maxDowntime
        self.maxRounds = max(1, maxRounds)
    }
}
