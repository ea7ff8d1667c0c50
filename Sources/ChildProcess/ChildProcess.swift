import Glibc

/// Starting programs with posix_spawn: Foundation's Process needs
/// libdispatch, which the daemons do not run, and coloctl and supervisord
/// both start programs (the demo's namespaces and daemons).
public enum ChildProcess {
    /// Where one of the child's standard streams goes.
    public enum Stream: Sendable {
        /// The parent's own.
        case inherit
        /// /dev/null.
        case discard
        /// Appended to a file, created if missing.
        case appendTo(String)
        /// A descriptor of the parent's (the child gets a copy).
        case descriptor(Int32)
    }

    public struct SpawnError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Starts `arguments` (`arguments[0]` looked up in PATH unless it holds
    /// a slash) and returns its pid. A child in a new session outlives the
    /// parent's terminal and process group.
    public static func spawn(_ arguments: [String], stdin: Stream = .inherit, stdout: Stream = .inherit,
                             stderr: Stream = .inherit, newSession: Bool = false) throws(SpawnError) -> pid_t {
        guard let program = arguments.first else { throw SpawnError(description: "nothing to run") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, stream) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch stream {
            case .inherit: break
            case .discard: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            case .appendTo(let path): posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
            }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        if newSession {
            posix_spawnattr_setflags(&attributes, 0x80 /* POSIX_SPAWN_SETSID, glibc >= 2.26; not exported to Swift */)
        }
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, program, &actions, &attributes, &argv, environ)
        guard result == 0 else {
            throw SpawnError(description: "cannot start \(arguments.joined(separator: " ")): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// Waits for `pid` and returns its status as a shell reports it: the
    /// exit code, or 128 + the signal that ended it.
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { return -1 }
        }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Runs `arguments` to the end and returns what it wrote to stdout
    /// (stderr stays the parent's) and its status.
    public static func output(_ arguments: [String]) throws(SpawnError) -> (text: String, status: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))") }
        // Neither end stays open in the child beyond its stdout copy.
        fds.forEach { _ = fcntl($0, F_SETFD, FD_CLOEXEC) }
        let pid: pid_t
        do {
            pid = try spawn(arguments, stdout: .descriptor(fds[1]))
        } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        close(fds[1])
        defer { close(fds[0]) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fds[0], &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return (String(decoding: bytes, as: UTF8.self), wait(pid))
    }
}
