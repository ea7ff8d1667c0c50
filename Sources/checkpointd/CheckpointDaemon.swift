import ArgumentParser
import DaemonRuntime
import PeerAuthentication

/// `checkpointd`: Streams guest RAM and device state to the peer host and keeps the colo-cache.
@main
struct CheckpointDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpointd",
        abstract: "Streams guest RAM and device state to the peer host and keeps the colo-cache.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    @Option(name: .long, help: ArgumentHelp(
        "The pre-shared key of the pair (the same file on both hosts), read at start-up. Without it, pairing is refused.",
        valueName: "file"))
    var peerKey: String?

    func run() throws {
        try DaemonHost.run(name: "checkpointd", options: options, policy: seccompPolicy) { environment in
            // Read before the sandbox: afterwards checkpointd cannot open files.
            let key = try peerKey.map { path throws(PeerAuthenticationError) in try PeerKey.load(path: path) }
            return CheckpointService(key: key, logger: environment.logger)
        }
    }
}
