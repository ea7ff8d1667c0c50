import Durations
import ArgumentParser
import ColoProtocol
import ControlSocket
import Glibc
import Logging
import Sandbox
import Synchronization
import SystemPackage
import Systemd

/// The project version every daemon and coloctl report.
public let coloVersion = "0.1.0"

/// What a daemon adds to the shared runtime: its own requests and its state.
public protocol DaemonService: Sendable {
    /// The daemon's state in a word, for status replies.
    var state: String { get }

    /// Serves a request body the runtime does not answer itself (it answers
    /// status and sandbox probes). Returns nil for a body this daemon does
    /// not serve; the client then gets ERROR_CODE_UNKNOWN_REQUEST. Runs on
    /// the connection's thread: return quickly, start long work elsewhere.
    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply?

    /// Called once, when the daemon serves: sandboxed, capabilities dropped.
    /// Where a service starts the threads that run on their own (a thread
    /// created before the sandbox would keep the capabilities it drops).
    func serving()
}

extension DaemonService {
    public func serving() {}
}

/// What the runtime tells a service at creation.
public struct DaemonEnvironment: Sendable {
    public let name: String
    public let logger: Logger
    /// The directory holding this host's control sockets.
    public let runtimeDirectory: String
    /// The daemon's own status, as its status requests report it.
    public let selfStatus: SelfStatus

    /// The control socket path of a daemon on this host.
    public func socketPath(of daemon: String) -> String {
        "\(runtimeDirectory)/\(daemon).sock"
    }
}

/// Runs a daemon: the sequence every daemon shares, in this order, on the
/// process's main thread.
///
/// 1. SIGTERM/SIGINT blocked before any other thread exists (every thread
///    inherits the mask), so only the main thread's sigwait receives them.
/// 2. Logging to journald (or stderr).
/// 3. The control socket: adopted from systemd, or bound in the runtime dir.
/// 4. The service is created: it opens what it needs while it still can.
/// 5. Capabilities dropped, then the seccomp allowlist installed. Both
///    happen while the main thread is the only thread: capabilities are per
///    thread, and threads created later inherit the empty sets.
/// 6. Serving; READY=1 to systemd; watchdog pings if asked for.
/// 7. SIGTERM or SIGINT: STOPPING=1, stop serving, exit 0.
public enum DaemonHost {
    public static func run(
        name: String,
        options: DaemonOptions,
        policy: SeccompPolicy,
        makeService: (DaemonEnvironment) throws -> any DaemonService
    ) throws {
        var termination = sigset_t()
        sigemptyset(&termination)
        sigaddset(&termination, SIGTERM)
        sigaddset(&termination, SIGINT)
        pthread_sigmask(SIG_BLOCK, &termination, nil)

        let level = options.logLevel
        LoggingSystem.bootstrap { _ in JournalLogHandler(daemon: name, level: level) }
        let logger = Logger(label: name)
        let server: ControlServer
        do {
            server = try start(name: name, options: options, policy: policy, logger: logger, makeService: makeService)
        } catch {
            logger.critical("\(name) cannot start: \(error)", metadata: ["event": "start_failed"])
            throw ExitCode.startFailed
        }

        let notifier = ServiceNotifier()
        if let interval = notifier.watchdogInterval {
            spawnThread(name: "watchdog") {
                while true {
                    notifier.watchdogPing()
                    usleep(UInt32(clamping: interval.microseconds / 2))
                }
            }
        }
        var received: Int32 = 0
        while sigwait(&termination, &received) != 0 {}
        notifier.stopping()
        logger.info("\(name) stopping", metadata: ["event": "daemon_stopping", "signal": "\(received)"])
        server.stop()
    }

    private static func start(
        name: String, options: DaemonOptions, policy: SeccompPolicy, logger: Logger,
        makeService: (DaemonEnvironment) throws -> any DaemonService
    ) throws(DaemonError) -> ControlServer {
        let selfStatus = SelfStatus(daemon: name)
        let runtimeDirectory = options.resolvedRuntimeDirectory
        let (listener, origin, path) = try openControlSocket(name: name, runtimeDirectory: runtimeDirectory)
        let allowed = try options.resolvedAllowedUIDs()
        selfStatus.record(socketOrigin: origin)
        let environment = DaemonEnvironment(name: name, logger: logger, runtimeDirectory: runtimeDirectory,
                                            selfStatus: selfStatus)
        let service: any DaemonService
        do {
            service = try makeService(environment)
        } catch {
            throw .startup("\(error)")
        }

        var sandbox = ColoSandboxStatus()
        if options.noSandbox {
            logger.warning("running without sandbox (--no-sandbox)", metadata: ["event": "sandbox_skipped"])
        } else {
            do {
                try Privileges.dropAllCapabilities()
                try policy.install()
            } catch {
                throw .sandbox(error)
            }
            sandbox.seccompFilterInstalled = true
            sandbox.allowedSyscallCount = UInt32(policy.allowedSyscallNames.count)
            logger.info("sandbox installed", metadata: [
                "event": "sandbox_installed", "allowed_syscalls": "\(sandbox.allowedSyscallCount)",
            ])
        }
        sandbox.noNewPrivileges = Privileges.noNewPrivileges
        sandbox.effectiveCapabilities = Privileges.effectiveCapabilities
        selfStatus.record(sandbox: sandbox)

        let server: ControlServer
        do {
            server = try ControlServer(listener: listener, policy: PeerPolicy(allowedUIDs: allowed), logger: logger) {
                request, context in
                switch request.body {
                case .status:
                    return ControlReply(.status(selfStatus.snapshot(state: service.state)))
                case .sandboxProbe:
                    var reply = ColoSandboxProbeReply()
                    reply.sandbox = selfStatus.sandbox
                    reply.outcomes = SandboxProbe.run(against: policy).map { outcome in
                        var message = ColoSandboxProbeOutcome()
                        message.syscall = outcome.syscall
                        message.refused = outcome.refused
                        message.errorNumber = outcome.errno
                        return message
                    }
                    return ControlReply(.sandboxProbe(reply))
                case .some(let body):
                    if let reply = service.handle(body, context: context) { return reply }
                    context.fds.forEach { try? $0.close() }
                    return .error(.unknownRequest, "\(name) does not serve this request")
                case .none:
                    return .error(.unknownRequest, "empty request body")
                }
            }
        } catch {
            throw .socket(error)
        }
        selfStatus.record(server: server)
        server.start()
        service.serving()
        ServiceNotifier().ready(status: "serving \(path)")
        logger.info("\(name) ready", metadata: [
            "event": "daemon_ready", "socket": "\(path)", "socket_origin": "\(origin)",
            "version": "\(coloVersion)",
        ])
        return server
    }

    /// The listening socket: handed over by systemd, or bound here.
    private static func openControlSocket(name: String, runtimeDirectory: String)
        throws(DaemonError) -> (SeqpacketSocket, origin: String, path: String) {
        let activated: [FileDescriptor]
        do {
            activated = try SocketActivation.seqpacketListeners()
        } catch {
            throw .systemd(error)
        }
        switch activated.count {
        case 0:
            break
        case 1:
            return (SeqpacketSocket(adopting: activated[0]), "systemd", "fd \(activated[0].rawValue)")
        default:
            throw .configuration("socket activation passed \(activated.count) sockets; \(name) serves exactly one")
        }
        if mkdir(runtimeDirectory, 0o755) != 0 && errno != EEXIST {
            throw .configuration("cannot create runtime directory \(runtimeDirectory): \(Errno(rawValue: errno))")
        }
        let path = "\(runtimeDirectory)/\(name).sock"
        do {
            let socket = try SeqpacketSocket.listen(at: path)
            // Anyone may connect; SO_PEERCRED decides who is served, and a
            // refused peer is told why instead of seeing EACCES.
            chmod(path, 0o666)
            return (socket, "bound", path)
        } catch {
            throw .socket(error)
        }
    }

}

extension ExitCode {
    /// A daemon that could not start (bad configuration, no socket, no
    /// sandbox): systemd sees a failed unit, a shell a non-zero status.
    static let startFailed = ExitCode(1)
}

