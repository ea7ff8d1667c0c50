import ArgumentParser

/// `coloctl`: the operator's command line, a client of the local supervisord.
///
/// Exit codes scripts can rely on (see `ColoctlExit`): 0 success, 2 the
/// supervisord could not be reached or refused, 3 a managed daemon is down,
/// 64 bad usage.
@main
struct Coloctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coloctl",
        abstract: "Control a COLO fault-tolerant VM pair on this host.",
        subcommands: [Status.self, Console.self, Up.self, Down.self])
}

/// Where supervisord listens, shared by every subcommand.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Directory of this host's control sockets (default: $COLO_RUNTIME_DIR, else /run/colo).",
        valueName: "dir"))
    var runtimeDir: String?

    @Option(name: .long, help: "Seconds to wait for supervisord's answer.")
    var timeout: Double = 5

    @Flag(name: .long, help: "Print JSON (the protobuf JSON mapping of the reply) instead of text.")
    var json = false

    var socketPath: String {
        let directory = runtimeDir ?? environmentValue("COLO_RUNTIME_DIR") ?? "/run/colo"
        return "\(directory)/supervisord.sock"
    }

    func validate() throws {
        guard timeout > 0, timeout <= 3600 else {
            throw ValidationError("--timeout must be between 0 and 3600 seconds")
        }
    }
}

/// Exit statuses of coloctl.
enum ColoctlExit {
    static let supervisorUnreachable = ExitCode(2)
    static let daemonDown = ExitCode(3)
}
