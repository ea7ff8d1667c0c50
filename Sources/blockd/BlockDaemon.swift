import ArgumentParser
import DaemonRuntime

/// `blockd`: Serves the guest's disk and replicates it to the peer over NBD.
@main
struct BlockDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blockd",
        abstract: "Serves the guest's disk and replicates it to the peer over NBD.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        try DaemonHost.run(name: "blockd", options: options, policy: seccompPolicy) { _ in
            IdleService()
        }
    }
}
