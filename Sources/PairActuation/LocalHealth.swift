import Durations
import ColoProtocol
import Glibc

extension GuestReplication {
    /// Watches the local daemons the guest depends on while this host holds
    /// a half of the pair (or runs it alone): one that stops answering is a
    /// local failure, reported once. Two misses in a row are needed, so one
    /// slow answer under load is not taken for a death; a killed daemon
    /// fails both at once (its socket is closed, then refused).
    func watchLocalDaemons() {
        let watched: [LocalDaemon] = [.vmmd, .proxyd, .blockd, .checkpointd]
        // Connections of its own: a daemon answers one connection's requests
        // in order, and a status request must not queue behind a checkpoint.
        let daemons = LocalDaemons(runtimeDirectory: daemons.runtimeDirectory)
        var misses: [LocalDaemon: Int] = [:]
        while true {
            usleep(50_000)
            let (active, proxyAttached, checkpointing) = shared.withLock {
                ($0.lockstep || $0.runningAlone, $0.proxyAttached, $0.lockstep)
            }
            guard active else { misses = [:]; continue }
            for daemon in watched {
                if daemon == .proxyd && !proxyAttached { continue }
                if daemon == .checkpointd && !checkpointing { continue }
                do {
                    try daemons.call(daemon, .status(ColoStatusRequest()), timeout: .seconds(2))
                    misses[daemon] = 0
                } catch {
                    misses[daemon, default: 0] += 1
                    if misses[daemon]! >= 2 {
                        let report = shared.withLock { $0.reports?.localFailure }
                        logger.critical("\(daemon.rawValue) is gone: \(error)", metadata: event("local_daemon_lost")
                            .merging(["daemon": "\(daemon.rawValue)"]) { $1 })
                        shared.withLock { $0.lockstep = false; $0.runningAlone = false; $0.abandoned = true }
                        report?("\(daemon.rawValue) is gone: \(error)")
                        return
                    }
                }
            }
        }
    }
}
