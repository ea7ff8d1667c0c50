import ArgumentParser
import Glibc
import Logging
import PairConfiguration
import PeerAuthentication
import PeerLink
import Sandbox
import Systemd
import Witness

/// `colo-witness`: the tie-breaker a pair's hosts ask before one of them runs
/// alone. Runs on a third host that both can normally reach.
@main
struct WitnessDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colo-witness",
        abstract: "Grant each protected pair to one host per epoch, so a cut link never makes two primaries.")

    @Option(help: "Address and port to listen on, e.g. 10.77.9.1:7700.")
    var listen: String

    @Option(help: "The pre-shared key file (the same bytes as the hosts' key-file).")
    var keyFile: String

    @Option(help: "Where grants are recorded across restarts (written atomically before each grant is announced).")
    var stateFile: String?

    func validate() throws {
        guard ValueParser.socketAddress(listen) != nil else {
            throw ValidationError("--listen \(listen): expected address:port")
        }
        if let stateFile, !stateFile.hasPrefix("/") {
            throw ValidationError("--state-file must be an absolute path")
        }
    }

    func run() throws {
        LoggingSystem.bootstrap { _ in JournalLogHandler(daemon: "colo-witness", level: .info) }
        let logger = Logger(label: "colo-witness")
        let address = ValueParser.socketAddress(listen)!
        do {
            let key = try PeerKey.load(path: keyFile)
            let listener = try TCPConnection.listen(on: address)
            let service = try WitnessService(listener: listener, key: key, stateFile: stateFile, logger: logger)
            try Privileges.dropAllCapabilities()
            try seccompPolicy.install()
            ServiceNotifier().ready(status: "witness on \(address)")
            logger.info("witness ready", metadata: ["event": "daemon_ready", "listen": "\(address)"])
            service.run()
        } catch {
            logger.critical("colo-witness cannot start: \(error)", metadata: ["event": "start_failed"])
            throw ExitCode(1)
        }
    }
}
