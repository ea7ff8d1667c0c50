import CSupport
import ColoProtocol
import Glibc
import Logging
import PairActuation
import PairConfiguration
import PairMetrics
import PairSupervision
import PeerAuthentication
import SystemPackage

/// This host's side of the pair: the configuration, the supervisor that
/// runs the state machine and heartbeat, and the replication it drives.
final class HostPair: Sendable {
    let configuration: HostConfiguration
    let supervisor: PairSupervisor
    let replication: GuestReplication
    /// What `coloctl status` and the Prometheus endpoint show of the pair.
    let metrics = PairMetrics()

    struct StartError: Error, CustomStringConvertible {
        let description: String
    }

    /// Everything that needs privileges or the filesystem happens here,
    /// before the sandbox: the configuration and key are read, the tap
    /// opened, the listening port bound. The pair's state goes to
    /// `stateDirectory`; blockd keeps a secondary's overlays in
    /// `overlayDirectory`, where supervisord removes stale ones.
    init(configurationPath: String, stateDirectory: String, overlayDirectory: String, runtimeDirectory: String,
         logger: Logger) throws(StartError) {
        do {
            configuration = try HostConfiguration(contentsOf: configurationPath)
        } catch {
            throw StartError(description: "\(error)")
        }
        let key: PeerKey
        do {
            key = try PeerKey.load(path: configuration.pair.keyFile)
        } catch {
            throw StartError(description: "\(configuration.pair.keyFile): \(error)")
        }
        let tap = colo_open_tap(configuration.network.tap)
        guard tap >= 0 else {
            throw StartError(description: "cannot open tap \(configuration.network.tap): \(String(cString: strerror(errno)))")
        }
        let daemons = LocalDaemons(runtimeDirectory: runtimeDirectory)
        replication = GuestReplication(configuration: configuration, daemons: daemons,
                                       tap: FileDescriptor(rawValue: tap), stateDirectory: overlayDirectory,
                                       metrics: metrics, logger: logger)
        do {
            supervisor = try PairSupervisor(configuration: configuration, key: key,
                                            stateFile: "\(stateDirectory)/pair-state", actuator: replication,
                                            logger: logger)
        } catch {
            throw StartError(description: "\(error)")
        }
    }

    /// Brings the local guest up for the restored role and state, then
    /// starts the link, heartbeat and watchdog.
    func start() throws(StartError) {
        do {
            let supervisor = supervisor
            let reports = ReplicationReports(localFailure: { supervisor.localFailure($0) },
                                             handoverRequested: { supervisor.handoverRequested() })
            try replication.start(role: supervisor.role, state: supervisor.state, reports: reports)
        } catch {
            throw StartError(description: "the local guest cannot start: \(error)")
        }
        supervisor.start()
    }
}
