import Glibc

/// The pre-shared key of a pair of hosts: every connection between them
/// (control, RAM channels, packet link, NBD) proves knowledge of it before a
/// single byte of guest state is accepted.
public struct PeerKey: Sendable {
    /// Fewer bytes than this is not a key worth trusting guest memory to.
    public static let minimumLength = 16

    let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(PeerAuthenticationError) {
        guard bytes.count >= Self.minimumLength else {
            throw .badKey("a key needs at least \(Self.minimumLength) bytes, this one has \(bytes.count)")
        }
        self.bytes = bytes
    }

    /// Reads a key file (raw bytes; a trailing newline is part of the key
    /// only if both hosts' files have it, as they are byte-identical copies).
    public static func load(path: String) throws(PeerAuthenticationError) -> PeerKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .badKey("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .badKey("cannot read \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            bytes += chunk[0..<count]
            guard bytes.count <= 4096 else { throw .badKey("\(path) is larger than 4096 bytes: not a key file") }
        }
        return try PeerKey(bytes: bytes)
    }
}
