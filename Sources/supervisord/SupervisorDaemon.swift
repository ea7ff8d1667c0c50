import ArgumentParser
import DaemonRuntime

/// `supervisord`: runs the pair's state machine and brokers fds between the
/// local daemons; the socket `coloctl` talks to.
@main
struct SupervisorDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervisord",
        abstract: "Drives checkpoints, heartbeat, failover and resync; the host's control point for coloctl.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        try DaemonHost.run(name: "supervisord", options: options, policy: seccompPolicy) { environment in
            SupervisorService(environment: environment)
        }
    }
}
