import ArgumentParser

/// `coloctl`: the operator's command line, a client of the local supervisord.
///
/// Exit statuses scripts can rely on (`ColoctlExit`; also in --help and
/// units/README.md):
///   0 success; 1 the command failed while being carried out (a resync that
///   fell back to running alone, a fenced host, an unexpected answer);
///   2 supervisord could not be reached; 3 a managed daemon is down or did
///   not answer; 4 refused: the pair's state does not take the command now,
///   or supervisord has no pair; 5 timed out (supervisord, the peer, or
///   --wait-timeout); 64 bad usage (unknown flag, bad value).
@main
struct Coloctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coloctl",
        abstract: "Control a COLO fault-tolerant VM pair on this host.",
        discussion: """
        Every subcommand talks to the local supervisord and takes --json for \
        machine-readable output (the protobuf JSON mapping of the reply; on \
        failure an object {"error": {"code", "message", "exit_status"}}).

        Exit statuses:
          0   success
          1   the command failed while being carried out (e.g. a resync fell back to running alone)
          2   supervisord could not be reached
          3   a managed daemon is down, or a daemon the command needs did not answer
          4   refused: the pair's state does not take this command now, or no pair is configured
          5   timed out (supervisord's answer, the peer, or --wait-timeout)
          64  bad usage (unknown subcommand or flag, bad value)
        """,
        subcommands: [Status.self, Checkpoint.self, Failover.self, Resync.self, Failback.self, Wait.self, Console.self, Up.self, Down.self])
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

    var callTimeout: Duration { .milliseconds(Int64(timeout * 1000)) }

    func validate() throws {
        guard timeout > 0, timeout <= 3600 else {
            throw ValidationError("--timeout must be between 0 and 3600 seconds")
        }
    }
}

/// Exit statuses of coloctl.
enum ColoctlExit {
    static let failed = ExitCode(1)
    static let supervisorUnreachable = ExitCode(2)
    static let daemonDown = ExitCode(3)
    static let refused = ExitCode(4)
    static let timedOut = ExitCode(5)
    /// ArgumentParser's own status for validation errors (EX_USAGE).
    static let usage = ExitCode.validationFailure
}
