import ArgumentParser
import DaemonRuntime
import Glibc

/// `supervisord`: runs the pair's state machine and brokers fds between the
/// local daemons; the socket `coloctl` talks to.
@main
struct SupervisorDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervisord",
        abstract: "Drives checkpoints, heartbeat, failover and resync; the host's control point for coloctl.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    @Option(help: ArgumentHelp("This host's pair configuration (see units/README.md). Without one, supervisord only reports the local daemons.",
                               valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("Where the pair's state and the secondary's disk overlays are kept.", valueName: "dir"))
    var stateDir = "/var/lib/colo"

    @Option(help: ArgumentHelp(
        "Where blockd keeps a secondary's disk overlays (default: the state directory). Under systemd blockd's own state directory: blockd creates the files, supervisord removes stale ones.",
        valueName: "dir"))
    var overlayDir: String?

    @Option(help: ArgumentHelp(
        "Local demo mode: start vmmd, checkpointd, proxyd and blockd from this directory (no systemd).",
        valueName: "dir"))
    var spawnDaemons: String?

    func run() throws {
        let options = options
        let config = config
        let stateDir = stateDir
        let overlayDir = overlayDir ?? stateDir
        let spawnDaemons = spawnDaemons
        try DaemonHost.run(name: "supervisord", options: options, policy: seccompPolicy) { environment in
            var pair: HostPair?
            if let config {
                mkdir(stateDir, 0o700)
                pair = try HostPair(configurationPath: config, stateDirectory: stateDir, overlayDirectory: overlayDir,
                                    runtimeDirectory: environment.runtimeDirectory, logger: environment.logger)
                if let spawnDaemons {
                    _ = try LocalDaemonSpawner.spawn(from: spawnDaemons, runtimeDirectory: environment.runtimeDirectory,
                                                     keyFile: pair!.configuration.pair.keyFile,
                                                     logLevel: "\(options.logLevel)")
                }
                try pair!.start()
            }
            return try SupervisorService(environment: environment, pair: pair,
                                         metricsListen: pair?.configuration.metrics?.listen)
        }
    }
}
