import ArgumentParser
import DaemonRuntime

/// `proxyd`: Compares the primary's and the secondary's packets and releases only matching output.
@main
struct ProxyDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxyd",
        abstract: "Compares the primary's and the secondary's packets and releases only matching output.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        try DaemonHost.run(name: "proxyd", options: options, policy: seccompPolicy) { _ in
            IdleService()
        }
    }
}
