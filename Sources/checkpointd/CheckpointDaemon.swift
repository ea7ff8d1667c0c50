import ArgumentParser
import DaemonRuntime

/// `checkpointd`: Streams guest RAM and device state to the peer host and keeps the colo-cache.
@main
struct CheckpointDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpointd",
        abstract: "Streams guest RAM and device state to the peer host and keeps the colo-cache.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        try DaemonHost.run(name: "checkpointd", options: options, policy: seccompPolicy) { _ in
            IdleService()
        }
    }
}
