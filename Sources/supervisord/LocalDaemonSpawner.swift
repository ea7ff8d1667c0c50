import Durations
import ChildProcess
import ControlSocket
import Glibc
import PairActuation

/// The local demo mode (`coloctl up`): without systemd to socket-activate
/// them, supervisord starts its host's daemons itself, before its own
/// sandbox is installed, each binding its control socket in the shared
/// runtime directory and installing its own sandbox.
enum LocalDaemonSpawner {
    struct SpawnError: Error, CustomStringConvertible {
        let description: String
    }

    /// Starts vmmd, checkpointd, proxyd and blockd from `directory` and
    /// waits until each answers on its socket.
    static func spawn(from directory: String, runtimeDirectory: String, keyFile: String,
                      logLevel: String) throws(SpawnError) -> [pid_t] {
        var pids: [pid_t] = []
        for daemon in LocalDaemon.allCases {
            var arguments = ["\(directory)/\(daemon.rawValue)", "--runtime-dir", runtimeDirectory, "--log-level", logLevel]
            if daemon != .vmmd { arguments += ["--peer-key", keyFile] }
            let path = "\(runtimeDirectory)/\(daemon.rawValue).sock"
            unlink(path)
            pids.append(try start(arguments))
            try waitForSocket(path, daemon: daemon.rawValue)
        }
        return pids
    }

    private static func start(_ arguments: [String]) throws(SpawnError) -> pid_t {
        do {
            return try ChildProcess.spawn(arguments)
        } catch {
            throw SpawnError(description: error.description)
        }
    }

    private static func waitForSocket(_ path: String, daemon: String) throws(SpawnError) {
        let deadline = ContinuousClock.now.advanced(by: .seconds(20))
        while ContinuousClock.now < deadline {
            if let socket = try? SeqpacketSocket.connect(to: path) {
                socket.close()
                return
            }
            usleep(20_000)
        }
        throw SpawnError(description: "\(daemon) did not open \(path) within 20 s")
    }
}
