import ArgumentParser
import ColoProtocol
import ControlSocket
import Glibc

/// `coloctl up`: the local demo pair on this one machine.
struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring up the local demo pair: two namespaces as the two hosts, one for a client, one for the witness.",
        discussion: """
            Creates the namespaces and links (see `coloctl up --help` and README.md), writes each host's \
            configuration and a fresh pair key under --dir, starts the witness and each host's supervisord \
            (which starts its daemons), and waits until the pair runs in lock-step. The guest then answers \
            at 10.0.2.15 inside the colo-client namespace, e.g. `ip netns exec colo-client curl 10.0.2.15`. \
            Exits 0 in lock-step, 4 when the pair did not get there in time, 1 on a set-up error.
            """)

    @Option(help: ArgumentHelp("Where the configurations, disks, keys and logs go.", valueName: "dir"))
    var dir = "/var/lib/colo-demo"

    @Option(help: ArgumentHelp("Directory holding supervisord, the daemons and colo-witness (default: coloctl's own).",
                               valueName: "dir"))
    var binaries: String?

    @Option(help: ArgumentHelp("The guest kernel (default: the test guest, colo-guest.elf, found beside the binaries or in guest/build).",
                               valueName: "file"))
    var guest: String?

    @Option(help: "Guest RAM, e.g. 64M.")
    var memory = "64M"

    @Option(help: "Maximum time between checkpoints, e.g. 2s.")
    var maxInterval = "2s"

    @Option(help: "How long a primary packet may wait for its secondary match, e.g. 200ms.")
    var compareTimeout = "200ms"

    @Option(help: "Heartbeat interval and the silence after which the peer is lost, e.g. 100ms,600ms.")
    var heartbeat = "100ms,400ms"

    @Option(help: "Seconds to wait for lock-step.")
    var wait: Double = 300

    @Flag(help: "Tear down an existing demo pair first.")
    var replace = false

    @Option(help: ArgumentHelp(
        "Replace one host (a or b) of the running demo pair by a fresh secondary (empty disk, no state), for `coloctl resync` on the survivor.",
        valueName: "host"))
    var freshHost: String?

    func validate() throws {
        guard heartbeat.split(separator: ",").count == 2 else {
            throw ValidationError("--heartbeat takes INTERVAL,TIMEOUT, e.g. 100ms,600ms")
        }
        guard wait > 0 else { throw ValidationError("--wait must be positive") }
        if let freshHost, !DemoPair.hosts.contains(freshHost) {
            throw ValidationError("--fresh-host takes a or b")
        }
    }

    func run() throws {
        guard geteuid() == 0 else {
            printError("coloctl up: the demo pair needs root (network namespaces, taps, /dev/kvm)")
            throw ExitCode.failure
        }
        if let freshHost {
            guard DemoPair.exists() else {
                printError("coloctl up: no demo pair is up to add a host to")
                throw ExitCode.failure
            }
            do {
                try DemoPair(directory: dir).replaceHost(freshHost, binaries: binaries ?? executableDirectory())
            } catch {
                printError("coloctl up: \(error)")
                throw ExitCode.failure
            }
            print("host \(freshHost) restarted as a fresh secondary; run coloctl resync on the survivor")
            return
        }
        if DemoPair.exists() {
            guard replace else {
                printError("coloctl up: a demo pair is up already (coloctl down, or coloctl up --replace)")
                throw ExitCode.failure
            }
            DemoPair.tearDown()
        }
        let binaries = binaries ?? executableDirectory()
        guard let kernel = guest ?? defaultGuest(binaries: binaries) else {
            printError("coloctl up: no test guest found; build it with guest/build.sh or pass --guest")
            throw ExitCode.failure
        }
        let parts = heartbeat.split(separator: ",").map(String.init)
        let pair = DemoPair(directory: dir)
        do {
            _ = try? runQuietly("rm", "-rf", dir)
            try pair.writeConfiguration(DemoPair.Settings(
                guestKernel: kernel, memory: memory, maxInterval: maxInterval, compareTimeout: compareTimeout,
                heartbeatInterval: parts[0], heartbeatTimeout: parts[1], ramChannels: 2, diskBytes: 1 << 20))
            try pair.createNetwork()
            try pair.startDaemons(binaries: binaries)
        } catch {
            printError("coloctl up: \(error)")
            DemoPair.tearDown()
            throw ExitCode.failure
        }
        print("demo pair starting: host a (primary) and host b (secondary); logs in \(dir)/host-*/daemons.log")
        let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int64(wait * 1000)))
        var lastLine = ""
        while ContinuousClock.now < deadline {
            let reports = DemoPair.hosts.map { pairReport(runtimeDirectory: pair.runtimeDirectory($0)) }
            let line = zip(DemoPair.hosts, reports).map { host, report in
                "host \(host): \(report.map { "\($0.hostRole) \($0.state)" } ?? "starting")"
            }.joined(separator: ", ")
            if line != lastLine {
                print(line)
                lastLine = line
            }
            if reports.allSatisfy({ $0?.state == "lockstep" }) {
                print("lock-step running: the guest answers at \(DemoPair.guestIP) in namespace colo-client")
                return
            }
            usleep(250_000)
        }
        printError("coloctl up: the pair did not reach lock-step within \(wait) s; see \(dir)/host-*/daemons.log")
        throw ExitCode(4)
    }

    private func executableDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return "." }
        let path = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
    }

    private func defaultGuest(binaries: String) -> String? {
        // Beside the binaries when installed; in the source tree's
        // guest/build when run from .build/<triple>/<configuration>.
        var candidates = ["\(binaries)/colo-guest.elf"]
        var directory = binaries
        for _ in 0..<4 {
            directory += "/.."
            candidates.append("\(directory)/guest/build/colo-guest.elf")
        }
        candidates.append("/usr/share/colo/colo-guest.elf")
        return candidates.first { access($0, R_OK) == 0 }.map { realPath($0) }
    }

    private func realPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// The pair as one host's supervisord reports it, or nil when it does not
/// answer (yet).
func pairReport(runtimeDirectory: String) -> ColoPairReport? {
    guard let client = try? ControlClient(connectingTo: "\(runtimeDirectory)/supervisord.sock") else { return nil }
    defer { client.close() }
    guard let response = try? client.call(.hostStatus(ColoHostStatusRequest()), timeout: .seconds(3)),
          case .hostStatus(let status) = response.message.body, status.hasPair else { return nil }
    return status.pair
}

/// `coloctl down`: the local demo pair's processes stopped, its namespaces removed.
struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop the local demo pair and remove its namespaces (its directory and logs are kept).")

    func run() throws {
        guard geteuid() == 0 else {
            printError("coloctl down: needs root")
            throw ExitCode.failure
        }
        DemoPair.tearDown()
        print("demo pair down")
    }
}
