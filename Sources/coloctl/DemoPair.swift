import ChildProcess
import Glibc

/// The local demo pair (`coloctl up`): two network namespaces play the two
/// hosts, a third the client, a fourth the witness, joined as a real
/// deployment would be:
///
///     colo-client (10.0.2.2) ── colo-lan bridge ──┬── ext-a ─ brx ─ tap0 (host A's proxyd)
///                                                 └── ext-b ─ brx ─ tap0 (host B's proxyd)
///     colo-a 192.168.77.1 ── replication link ── 192.168.77.2 colo-b
///     colo-a 172.31.1.2 ── colo-w 172.31.1.1 / 172.31.2.1 ── 172.31.2.2 colo-b
///
/// The guest answers at 10.0.2.15 on the client's LAN, whichever host
/// serves it. Each host runs its own supervisord (in demo mode it starts
/// the host's daemons), with its own runtime and state directories.
struct DemoPair {
    static let namespaces = ["colo-a", "colo-b", "colo-client", "colo-lan", "colo-w"]
    static let hosts = ["a", "b"]
    static let guestIP = "10.0.2.15"
    static let clientIP = "10.0.2.2"

    let directory: String

    func hostDirectory(_ host: String) -> String { "\(directory)/host-\(host)" }
    func runtimeDirectory(_ host: String) -> String { "\(hostDirectory(host))/run" }
    var keyFile: String { "\(directory)/pair.key" }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    // MARK: - Network

    func createNetwork() throws(Failure) {
        for namespace in Self.namespaces {
            try run("ip", "netns", "add", namespace)
            try run("ip", "-n", namespace, "link", "set", "lo", "up")
        }
        try run("ip", "-n", "colo-lan", "link", "add", "br0", "type", "bridge")
        try run("ip", "-n", "colo-lan", "link", "set", "br0", "up")
        for host in Self.hosts {
            let namespace = "colo-\(host)"
            try run("ip", "link", "add", "ext-\(host)", "netns", namespace, "type", "veth",
                    "peer", "name", "lan-\(host)", "netns", "colo-lan")
            try run("ip", "-n", "colo-lan", "link", "set", "lan-\(host)", "master", "br0", "up")
            try run("ip", "-n", namespace, "link", "add", "brx", "type", "bridge")
            try run("ip", "-n", namespace, "link", "set", "brx", "up")
            try run("ip", "-n", namespace, "link", "set", "ext-\(host)", "master", "brx", "up")
            try run("ip", "-n", namespace, "tuntap", "add", "dev", "tap0", "mode", "tap")
            try run("ip", "-n", namespace, "link", "set", "tap0", "master", "brx", "up")
        }
        try run("ip", "link", "add", "c0", "netns", "colo-client", "type", "veth",
                "peer", "name", "lan-c", "netns", "colo-lan")
        try run("ip", "-n", "colo-lan", "link", "set", "lan-c", "master", "br0", "up")
        try run("ip", "-n", "colo-client", "addr", "add", "\(Self.clientIP)/24", "dev", "c0")
        try run("ip", "-n", "colo-client", "link", "set", "c0", "up")
        try run("ip", "link", "add", "rep", "netns", "colo-a", "type", "veth", "peer", "name", "rep", "netns", "colo-b")
        for (index, host) in Self.hosts.enumerated() {
            try run("ip", "-n", "colo-\(host)", "addr", "add", "\(replicationAddress(host))/24", "dev", "rep")
            try run("ip", "-n", "colo-\(host)", "link", "set", "rep", "up")
            let subnet = index + 1
            try run("ip", "link", "add", "w-\(host)", "netns", "colo-w", "type", "veth",
                    "peer", "name", "wit", "netns", "colo-\(host)")
            try run("ip", "-n", "colo-w", "addr", "add", "172.31.\(subnet).1/24", "dev", "w-\(host)")
            try run("ip", "-n", "colo-w", "link", "set", "w-\(host)", "up")
            try run("ip", "-n", "colo-\(host)", "addr", "add", "172.31.\(subnet).2/24", "dev", "wit")
            try run("ip", "-n", "colo-\(host)", "link", "set", "wit", "up")
        }
    }

    func replicationAddress(_ host: String) -> String { host == "a" ? "192.168.77.1" : "192.168.77.2" }
    func witnessAddress(_ host: String) -> String { host == "a" ? "172.31.1.1" : "172.31.2.1" }

    // MARK: - Configuration

    struct Settings {
        var guestKernel: String
        var memory: String
        var maxInterval: String
        var compareTimeout: String
        var heartbeatInterval: String
        var heartbeatTimeout: String
        var ramChannels: Int
        var diskBytes: Int
    }

    func writeConfiguration(_ settings: Settings) throws(Failure) {
        try makeDirectory(directory)
        var key = [UInt8](repeating: 0, count: 32)
        let random = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        defer { close(random) }
        guard random >= 0, read(random, &key, key.count) == key.count else {
            throw Failure(description: "no randomness for the pair key")
        }
        try writeFile(keyFile, key, mode: 0o600)
        for host in Self.hosts {
            let other = host == "a" ? "b" : "a"
            try makeDirectory(hostDirectory(host))
            try makeDirectory(runtimeDirectory(host))
            try makeDirectory("\(hostDirectory(host))/state")
            let disk = "\(hostDirectory(host))/disk.img"
            let fd = open(disk, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
            guard fd >= 0, ftruncate(fd, off_t(settings.diskBytes)) == 0 else {
                throw Failure(description: "cannot create \(disk): \(String(cString: strerror(errno)))")
            }
            close(fd)
            let text = """
                # Host \(host) of the local demo pair (coloctl up).
                [pair]
                name = demo
                host = host-\(host)
                role = \(host == "a" ? "primary" : "secondary")
                listen = \(replicationAddress(host)):7400
                peer = \(replicationAddress(other)):7400
                key-file = \(keyFile)
                witness = \(witnessAddress(host)):7500

                [guest]
                kernel = \(settings.guestKernel)
                command-line = ip=\(Self.guestIP)/24
                memory = \(settings.memory)
                vcpus = 1
                disk = \(disk)

                [network]
                tap = tap0
                guest-mac = 52:54:00:c0:10:01
                guest-ip = \(Self.guestIP)

                [checkpoint]
                max-interval = \(settings.maxInterval)
                compare-timeout = \(settings.compareTimeout)
                queue-limit = 4096
                ram-channels = \(settings.ramChannels)

                [heartbeat]
                interval = \(settings.heartbeatInterval)
                timeout = \(settings.heartbeatTimeout)

                """
            try writeFile("\(hostDirectory(host))/host.conf", Array(text.utf8), mode: 0o644)
        }
    }

    // MARK: - Processes

    /// The witness, then each host's supervisord (which starts that host's
    /// daemons), each in its namespace, in a session of its own, logging to
    /// a file in the host's directory.
    func startDaemons(binaries: String) throws(Failure) {
        try spawnDetached(["ip", "netns", "exec", "colo-w", "\(binaries)/colo-witness",
                           "--listen", "0.0.0.0:7500", "--key-file", keyFile,
                           "--state-file", "\(directory)/witness.state"],
                          log: "\(directory)/witness.log")
        for host in Self.hosts {
            try startHost(host, binaries: binaries)
        }
    }

    private func startHost(_ host: String, binaries: String) throws(Failure) {
        try spawnDetached(["ip", "netns", "exec", "colo-\(host)", "\(binaries)/supervisord",
                           "--config", "\(hostDirectory(host))/host.conf",
                           "--runtime-dir", runtimeDirectory(host),
                           "--state-dir", "\(hostDirectory(host))/state",
                           "--spawn-daemons", binaries],
                          log: "\(hostDirectory(host))/daemons.log")
    }

    /// Replaces a host of the demo pair by a fresh one, as a new machine
    /// would join: whatever ran there is stopped, its state and disk are
    /// wiped (an empty image of the same size), and it starts as a
    /// secondary, waiting for the survivor's `coloctl resync`.
    func replaceHost(_ host: String, binaries: String) throws(Failure) {
        let namespace = "colo-\(host)"
        for pid in (try? output("ip", "netns", "pids", namespace))?.split(separator: "\n") ?? [] {
            if let pid = pid_t(pid.trimmingCharacters(in: " ")) { kill(pid, SIGKILL) }
        }
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while ((try? output("ip", "netns", "pids", namespace)) ?? "").contains(where: \.isNumber) {
            guard ContinuousClock.now < deadline else { throw Failure(description: "the processes of \(namespace) do not exit") }
            usleep(50_000)
        }
        _ = try? runQuietly("rm", "-rf", "\(hostDirectory(host))/state", runtimeDirectory(host))
        try makeDirectory("\(hostDirectory(host))/state")
        try makeDirectory(runtimeDirectory(host))
        let disk = "\(hostDirectory(host))/disk.img"
        var info = stat()
        guard stat(disk, &info) == 0 else { throw Failure(description: "\(disk): \(String(cString: strerror(errno)))") }
        let fd = open(disk, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0, ftruncate(fd, info.st_size) == 0 else {
            throw Failure(description: "cannot recreate \(disk): \(String(cString: strerror(errno)))")
        }
        close(fd)
        let configuration = "\(hostDirectory(host))/host.conf"
        guard let text = try? readText(configuration) else { throw Failure(description: "cannot read \(configuration)") }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            line.hasPrefix("role = ") ? "role = secondary" : String(line)
        }
        try writeFile(configuration, Array(lines.joined(separator: "\n").utf8), mode: 0o644)
        try startHost(host, binaries: binaries)
    }

    /// Stops every process in the demo's namespaces and removes them.
    static func tearDown() {
        for namespace in namespaces {
            for pid in (try? output("ip", "netns", "pids", namespace))?.split(separator: "\n") ?? [] {
                if let pid = pid_t(pid.trimmingCharacters(in: " ")) { kill(pid, SIGKILL) }
            }
        }
        // Give the kernel a moment to reap them before the namespaces go.
        usleep(200_000)
        for namespace in namespaces {
            _ = try? runQuietly("ip", "netns", "del", namespace)
        }
    }

    static func exists() -> Bool {
        ((try? output("ip", "netns", "list")) ?? "").split(separator: "\n").contains { $0.hasPrefix("colo-lan") }
    }
}

// MARK: - Small process and file helpers

func run(_ arguments: String...) throws(DemoPair.Failure) {
    let status = try spawnAndWait(arguments, output: .inherit)
    guard status == 0 else { throw DemoPair.Failure(description: "\(arguments.joined(separator: " ")) failed (status \(status))") }
}

@discardableResult
func runQuietly(_ arguments: String...) throws(DemoPair.Failure) -> Int32 {
    try spawnAndWait(arguments, output: .discard)
}

func output(_ arguments: String...) throws(DemoPair.Failure) -> String {
    do {
        return try ChildProcess.output(arguments).text
    } catch {
        throw DemoPair.Failure(description: error.description)
    }
}

private func spawnAndWait(_ arguments: [String], output: ChildProcess.Stream) throws(DemoPair.Failure) -> Int32 {
    do {
        return ChildProcess.wait(try ChildProcess.spawn(arguments, stdout: output, stderr: output))
    } catch {
        throw DemoPair.Failure(description: error.description)
    }
}

/// Starts a long-lived process in a new session (it outlives coloctl),
/// its output appended to `log`.
func spawnDetached(_ arguments: [String], log: String) throws(DemoPair.Failure) {
    do {
        _ = try ChildProcess.spawn(arguments, stdin: .discard, stdout: .appendTo(log), stderr: .appendTo(log),
                                   newSession: true)
    } catch {
        throw DemoPair.Failure(description: error.description)
    }
}

func readText(_ path: String) throws(DemoPair.Failure) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw DemoPair.Failure(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = read(fd, &buffer, buffer.count)
        if count <= 0 { break }
        bytes += buffer[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

func makeDirectory(_ path: String) throws(DemoPair.Failure) {
    guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
        throw DemoPair.Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))")
    }
}

func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(DemoPair.Failure) {
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, mode)
    guard fd >= 0 else { throw DemoPair.Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard write(fd, bytes, bytes.count) == bytes.count else {
        throw DemoPair.Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))")
    }
}

extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set }.reversed().drop { $0 == set }.reversed())
    }
}
