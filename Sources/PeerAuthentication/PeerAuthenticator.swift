internal import COpenSSL
import Glibc

/// Mutual challenge-response authentication of a fresh connection between
/// the two hosts of a pair, run before any protocol (supervisord control,
/// checkpoint RAM channels, proxyd's packet link, NBD) speaks on it.
///
/// Both sides send a hello at once, then a proof:
///
///     hello = "COLOPEER" | version (1) | role (0 initiator, 1 responder)
///             | channel length (1) | channel | nonce (32 random bytes)
///     proof = HMAC-SHA256(key, "colo-peer-v1" | role | channel
///                              | initiator nonce | responder nonce)
///
/// Fresh nonces from both sides make a recorded proof useless later; the
/// role inside the MAC stops a proof being reflected back; the channel name
/// stops a connection authenticated for one purpose (say, a RAM channel)
/// being used for another. A side that sees the wrong magic, version,
/// channel or proof closes without reading anything further.
public enum PeerAuthenticator {
    public enum Role: UInt8, Sendable {
        /// The side that connected.
        case initiator = 0
        /// The side that accepted.
        case responder = 1
    }

    /// What both sides share once authenticated: a key for this connection
    /// only, derived from the pre-shared key and both nonces, for protocols
    /// that authenticate their frames too.
    public struct Session: Sendable {
        public let channel: String
        public let sessionKey: [UInt8]
    }

    static let magic = Array("COLOPEER".utf8)
    static let version: UInt8 = 1
    static let nonceLength = 32
    static let proofLength = 32
    public static let maxChannelLength = 64

    /// Authenticates the connected stream socket `fd` as `role` for
    /// `channel`, within `timeout`. Leaves the socket open either way; on
    /// failure the caller closes it.
    public static func authenticate(fd: Int32, role: Role, channel: String, key: PeerKey,
                                    timeout: Duration = .seconds(5)) throws(PeerAuthenticationError) -> Session {
        let channelBytes = Array(channel.utf8)
        guard !channelBytes.isEmpty, channelBytes.count <= maxChannelLength else {
            throw .io("channel name must be 1...\(maxChannelLength) bytes")
        }
        let stream = DeadlineStream(fd: fd, deadline: ContinuousClock.now.advanced(by: timeout))
        let ownNonce = try randomBytes(nonceLength)
        try stream.write(magic + [version, role.rawValue, UInt8(channelBytes.count)] + channelBytes + ownNonce)

        let header = try stream.read(magic.count + 3)
        guard Array(header[0..<magic.count]) == magic else { throw .notAPeer("bad magic") }
        guard header[magic.count] == version else {
            throw .notAPeer("protocol version \(header[magic.count]), expected \(version)")
        }
        guard let peerRole = Role(rawValue: header[magic.count + 1]), peerRole != role else {
            throw .notAPeer("peer claims role \(header[magic.count + 1]) opposite to ours")
        }
        let peerChannelLength = Int(header[magic.count + 2])
        guard (1...maxChannelLength).contains(peerChannelLength) else { throw .notAPeer("bad channel length") }
        let peerChannel = try stream.read(peerChannelLength)
        guard peerChannel == channelBytes else {
            throw .wrongChannel(expected: channel, received: String(decoding: peerChannel, as: UTF8.self))
        }
        let peerNonce = try stream.read(nonceLength)
        guard peerNonce != ownNonce else { throw .notAPeer("peer echoed our nonce") }

        let (initiatorNonce, responderNonce) = role == .initiator ? (ownNonce, peerNonce) : (peerNonce, ownNonce)
        func proof(for prover: Role) -> [UInt8] {
            hmacSHA256(key: key.bytes, Array("colo-peer-v1".utf8) + [prover.rawValue] + channelBytes
                       + initiatorNonce + responderNonce)
        }
        try stream.write(proof(for: role))
        let peerProof = try stream.read(proofLength)
        guard constantTimeEqual(peerProof, proof(for: peerRole)) else { throw .proofMismatch }
        let sessionKey = hmacSHA256(key: key.bytes, Array("colo-session-v1".utf8) + channelBytes
                                    + initiatorNonce + responderNonce)
        return Session(channel: channel, sessionKey: sessionKey)
    }

    static func hmacSHA256(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = HMAC(EVP_sha256(), key, Int32(key.count), data, data.count, &output, &length)
        return Array(output.prefix(Int(length)))
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && CRYPTO_memcmp(a, b, a.count) == 0
    }

    static func randomBytes(_ count: Int) throws(PeerAuthenticationError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard RAND_bytes(&bytes, Int32(count)) == 1 else { throw .io("no randomness available") }
        return bytes
    }
}

/// Blocking reads and writes on a socket, each bounded by one deadline for
/// the whole handshake, so a silent or trickling peer cannot hold a daemon.
struct DeadlineStream {
    let fd: Int32
    let deadline: ContinuousClock.Instant

    func write(_ bytes: [UInt8]) throws(PeerAuthenticationError) {
        var offset = 0
        while offset < bytes.count {
            try wait(for: Int16(POLLOUT))
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == EPIPE || errno == ECONNRESET { throw .closed }
                throw .io("send: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    func read(_ count: Int) throws(PeerAuthenticationError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            try wait(for: Int16(POLLIN))
            let received = bytes[offset...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if received < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == ECONNRESET { throw .closed }
                throw .io("recv: \(String(cString: strerror(errno)))")
            }
            if received == 0 { throw .closed }
            offset += received
        }
        return bytes
    }

    private func wait(for events: Int16) throws(PeerAuthenticationError) {
        while true {
            let remaining = deadline - .now
            guard remaining > .zero else { throw .timedOut }
            let (seconds, attoseconds) = remaining.components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let result = poll(&entry, 1, milliseconds)
            if result < 0 && errno == EINTR { continue }
            guard result >= 0 else { throw .io("poll: \(String(cString: strerror(errno)))") }
            if result > 0 { return }
        }
    }
}
