/// One host's configuration of a protected VM pair, validated: every field
/// present, in range and consistent, or the daemon does not start and says
/// which line is wrong.
///
///     [pair]
///     name = demo
///     host = alpha                     # this host's name in the pair
///     role = primary                   # or secondary
///     listen = 10.77.0.1:7600          # where the peer connects to us
///     peer = 10.77.0.2:7600
///     key-file = /etc/colo/demo.key    # same bytes on both hosts
///     witness = 10.77.9.1:7700         # optional tie-breaker
///
///     [guest]
///     kernel = /usr/local/share/colo/colo-guest.elf
///     initrd = /path                   # optional
///     command-line = ip=10.0.2.15/24
///     memory = 128M
///     vcpus = 1
///     disk = /var/lib/colo/demo/disk.img
///
///     [network]
///     tap = colo-demo0                 # external interface
///     guest-mac = 52:54:00:12:34:56
///     guest-ip = 10.0.2.15
///
///     [checkpoint]
///     max-interval = 2s
///     compare-timeout = 20ms
///     queue-limit = 4096
///     ram-channels = 2
///
///     [heartbeat]
///     interval = 100ms
///     timeout = 500ms
///
///     [metrics]                        # optional: Prometheus scrape endpoint
///     listen = 127.0.0.1:9464          # serves GET /metrics over HTTP
public struct HostConfiguration: Sendable, Equatable {
    public enum Role: String, Sendable, CaseIterable {
        case primary, secondary
    }

    public struct Pair: Sendable, Equatable {
        public var name: String
        /// This host's name: how the witness and the peer's logs know it.
        public var host: String
        public var role: Role
        public var listen: SocketAddress
        public var peer: SocketAddress
        public var keyFile: String
        public var witness: SocketAddress?
    }

    public struct Guest: Sendable, Equatable {
        public var kernel: String
        public var initrd: String?
        public var commandLine: String
        public var memoryBytes: UInt64
        public var vcpus: Int
        public var disk: String
    }

    public struct Network: Sendable, Equatable {
        public var tap: String
        public var guestMAC: [UInt8]
        public var guestIP: IPAddress
    }

    public struct CheckpointPolicy: Sendable, Equatable {
        /// A checkpoint at least this often, matched or not.
        public var maxInterval: Duration
        /// How long a primary packet may wait for its secondary twin.
        public var compareTimeout: Duration
        /// Held packets past which a checkpoint is forced (never a drop).
        public var queueLimit: Int
        /// TCP connections carrying RAM pages.
        public var ramChannels: Int
    }

    public struct Heartbeat: Sendable, Equatable {
        public var interval: Duration
        /// Silence after which the peer is declared lost.
        public var timeout: Duration
    }

    /// Where supervisord serves its metrics to Prometheus.
    public struct Metrics: Sendable, Equatable {
        public var listen: SocketAddress
    }

    public var pair: Pair
    public var guest: Guest
    public var network: Network
    public var checkpoint: CheckpointPolicy
    public var heartbeat: Heartbeat
    /// Absent: no metrics endpoint (`coloctl status` still shows the figures).
    public var metrics: Metrics?

    /// The smallest guest RAM the project's VMs accept.
    public static let minimumMemory: UInt64 = 32 << 20

    public init(file: ConfigurationFile) throws(ConfigurationError) {
        var readers: [String: SectionReader] = [:]
        for section in file.sections {
            guard Self.sectionNames.contains(section.name) else {
                throw ConfigurationError(path: file.path, line: section.line,
                                         "unknown section [\(section.name)] (known: \(Self.sectionNames.joined(separator: ", ")))")
            }
            readers[section.name] = SectionReader(section: section, path: file.path)
        }
        func reader(_ name: String) throws(ConfigurationError) -> SectionReader {
            guard let reader = readers[name] else {
                throw ConfigurationError(path: file.path, line: 0, "missing section [\(name)]")
            }
            return reader
        }

        var pairSection = try reader("pair")
        pair = Pair(
            name: try pairSection.required("name", "a name of letters, digits, '-' or '_'") {
                !$0.isEmpty && $0.count <= 32 && $0.allSatisfy(\.isNameCharacter) ? $0 : nil
            },
            host: try pairSection.required("host", "a name of letters, digits, '-' or '_'") {
                !$0.isEmpty && $0.count <= 64 && $0.allSatisfy(\.isNameCharacter) ? $0 : nil
            },
            role: try pairSection.required("role", "primary or secondary") { Role(rawValue: $0) },
            listen: try pairSection.required("listen", "address:port", ValueParser.socketAddress),
            peer: try pairSection.required("peer", "address:port", ValueParser.socketAddress),
            keyFile: try pairSection.required("key-file", "an absolute path", ValueParser.absolutePath),
            witness: try pairSection.optional("witness", "address:port", ValueParser.socketAddress))
        try pairSection.rejectUnknown()
        guard pair.listen != pair.peer else {
            throw pairSection.error(at: "peer", "the peer's address is our own listen address")
        }

        var guestSection = try reader("guest")
        guest = Guest(
            kernel: try guestSection.required("kernel", "an absolute path", ValueParser.absolutePath),
            initrd: try guestSection.optional("initrd", "an absolute path", ValueParser.absolutePath),
            commandLine: try guestSection.required("command-line", "at most 2048 bytes") {
                $0.utf8.count <= 2048 ? $0 : nil
            },
            memoryBytes: try guestSection.required("memory", "a size such as 128M (at least 32M, at most 1T)") {
                ValueParser.size($0).flatMap { (Self.minimumMemory...(1 << 40)).contains($0) ? $0 : nil }
            },
            vcpus: try guestSection.required("vcpus", "1 to 64") { ValueParser.integer($0, in: 1...64) },
            disk: try guestSection.required("disk", "an absolute path", ValueParser.absolutePath))
        try guestSection.rejectUnknown()

        var networkSection = try reader("network")
        network = Network(
            tap: try networkSection.required("tap", "an interface name of 1 to 15 characters") {
                (1...15).contains($0.count) && $0.allSatisfy { $0.isNameCharacter || $0 == "." } ? $0 : nil
            },
            guestMAC: try networkSection.required("guest-mac", "a unicast MAC such as 52:54:00:12:34:56",
                                                  ValueParser.macAddress),
            guestIP: try networkSection.required("guest-ip", "an IP address") { IPAddress($0) })
        try networkSection.rejectUnknown()

        var checkpointSection = try reader("checkpoint")
        checkpoint = CheckpointPolicy(
            maxInterval: try checkpointSection.required("max-interval", "a duration from 10ms to 1m, e.g. 2s") {
                ValueParser.duration($0).flatMap { $0 >= .milliseconds(10) && $0 <= .seconds(60) ? $0 : nil }
            },
            compareTimeout: try checkpointSection.required("compare-timeout", "a duration from 1ms to 10s") {
                ValueParser.duration($0).flatMap { $0 >= .milliseconds(1) && $0 <= .seconds(10) ? $0 : nil }
            },
            queueLimit: try checkpointSection.required("queue-limit", "16 to 1048576") {
                ValueParser.integer($0, in: 16...1_048_576)
            },
            ramChannels: try checkpointSection.required("ram-channels", "1 to 16") {
                ValueParser.integer($0, in: 1...16)
            })
        try checkpointSection.rejectUnknown()

        var heartbeatSection = try reader("heartbeat")
        heartbeat = Heartbeat(
            interval: try heartbeatSection.required("interval", "a duration from 10ms to 10s") {
                ValueParser.duration($0).flatMap { $0 >= .milliseconds(10) && $0 <= .seconds(10) ? $0 : nil }
            },
            timeout: try heartbeatSection.required("timeout", "a duration from 30ms to 60s") {
                ValueParser.duration($0).flatMap { $0 >= .milliseconds(30) && $0 <= .seconds(60) ? $0 : nil }
            })
        try heartbeatSection.rejectUnknown()
        guard heartbeat.timeout >= heartbeat.interval * 3 else {
            throw heartbeatSection.error(at: "timeout",
                                         "must be at least 3 heartbeat intervals, or one lost packet declares the peer dead")
        }

        if var metricsSection = readers["metrics"] {
            metrics = Metrics(listen: try metricsSection.required(
                "listen", "address:port of the Prometheus endpoint, e.g. 127.0.0.1:9464", ValueParser.socketAddress))
            try metricsSection.rejectUnknown()
            guard metrics?.listen != pair.listen else {
                throw metricsSection.error(at: "listen", "the metrics endpoint cannot share [pair] listen's address")
            }
        }
    }

    /// Reads and validates the file at `path`.
    public init(contentsOf path: String) throws(ConfigurationError) {
        try self.init(file: ConfigurationFile(text: try readTextFile(path), path: path))
    }

    static let sectionNames = ["pair", "guest", "network", "checkpoint", "heartbeat", "metrics"]
}

/// Takes the entries of one section, each at most once, and reports what is
/// left over as unknown keys.
struct SectionReader {
    let section: ConfigurationFile.Section
    let path: String
    private var used: Set<String> = []

    init(section: ConfigurationFile.Section, path: String) {
        self.section = section
        self.path = path
    }

    mutating func optional<T>(_ key: String, _ expected: String,
                              _ parse: (String) -> T?) throws(ConfigurationError) -> T? {
        used.insert(key)
        guard let entry = section.entries.first(where: { $0.key == key }) else { return nil }
        guard let value = parse(entry.value) else {
            throw ConfigurationError(path: path, line: entry.line,
                                     "[\(section.name)] \(key) = \(entry.value): expected \(expected)")
        }
        return value
    }

    mutating func required<T>(_ key: String, _ expected: String,
                              _ parse: (String) -> T?) throws(ConfigurationError) -> T {
        guard let value = try optional(key, expected, parse) else {
            throw ConfigurationError(path: path, line: section.line,
                                     "[\(section.name)] lacks '\(key)' (\(expected))")
        }
        return value
    }

    func rejectUnknown() throws(ConfigurationError) {
        if let unknown = section.entries.first(where: { !used.contains($0.key) }) {
            throw ConfigurationError(path: path, line: unknown.line,
                                     "unknown key '\(unknown.key)' in [\(section.name)] (known: \(used.sorted().joined(separator: ", ")))")
        }
    }

    func error(at key: String, _ message: String) -> ConfigurationError {
        let line = section.entries.first(where: { $0.key == key })?.line ?? section.line
        return ConfigurationError(path: path, line: line, "[\(section.name)] \(key): \(message)")
    }
}
