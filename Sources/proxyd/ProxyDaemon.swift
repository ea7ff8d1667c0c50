import ArgumentParser
import DaemonRuntime
import PeerAuthentication

/// `proxyd`: Compares the primary's and the secondary's packets and releases only matching output.
@main
struct ProxyDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxyd",
        abstract: "Compares the primary's and the secondary's packets and releases only matching output.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    @Option(name: .long, help: ArgumentHelp(
        "The pre-shared key of the host pair, authenticating the link to the other proxyd.",
        valueName: "FILE"))
    var peerKey: String?

    func run() throws {
        let keyPath = peerKey
        try DaemonHost.run(name: "proxyd", options: options, policy: seccompPolicy) { environment in
            // Read now: once the sandbox is in place no file can be opened.
            let key = try keyPath.map { path throws(PeerAuthenticationError) in try PeerKey.load(path: path) }
            return ProxyService(key: key, logger: environment.logger)
        }
    }
}
