import ArgumentParser
import DaemonRuntime
import NBD
import PeerAuthentication

/// `blockd`: Serves the guest's disk and replicates it to the peer over NBD.
@main
struct BlockDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blockd",
        abstract: "Serves the guest's disk and replicates it to the peer over NBD.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    @Option(name: .long, help: ArgumentHelp(
        "The pair's pre-shared key; replication links are authenticated with it (channel \"nbd\"). Read at start-up.",
        valueName: "file"))
    var peerKey: String?

    @Option(name: .long, help: ArgumentHelp(
        "Serve plain NBD for local tools: unix:PATH or tcp:127.0.0.1:PORT (repeatable). Exports: each disk by name (the guest's view), and NAME.secondary (read-only) on a secondary.",
        valueName: "address"))
    var nbdListen: [NBDListenAddress] = []

    func run() throws {
        try DaemonHost.run(name: "blockd", options: options, policy: seccompPolicy) { environment in
            let key = try peerKey.map { path throws(PeerAuthenticationError) in try PeerKey.load(path: path) }
            let service = BlockdService(environment: environment, peerKey: key)
            for address in nbdListen {
                let fd = try address.listen()
                service.servePlainNBD(listener: fd, name: address.description)
            }
            return service
        }
    }
}
