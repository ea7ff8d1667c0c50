import ArgumentParser
import ColoProtocol
import ControlSocket
import Dispatch
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
    /// not serve; the client then gets ERROR_CODE_UNKNOWN_REQUEST.
    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) async -> ControlReply?
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

/// Runs a daemon: the sequence every daemon shares, in this order.
///
/// 1. Logging to journald (or stderr).
/// 2. The control socket: adopted from systemd, or bound in the runtime dir.
/// 3. The service is created: it opens what it needs while it still can.
/// 4. Capabilities dropped, seccomp allowlist installed for every thread.
/// 5. Serving; READY=1 to systemd; watchdog pings if asked for.
/// 6. SIGTERM or SIGINT: STOPPING=1, stop serving, exit 0.
public enum DaemonHost {
    public static func run(
        name: String,
        options: DaemonOptions,
        policy: SeccompPolicy,
        makeService: @Sendable (DaemonEnvironment) throws -> any DaemonService
    ) async throws {
        let level = options.logLevel
        LoggingSystem.bootstrap { _ in JournalLogHandler(daemon: name, level: level) }
        let logger = Logger(label: name)
        do {
            try await serve(name: name, options: options, policy: policy, logger: logger, makeService: makeService)
        } catch {
            logger.critical("\(name) cannot start: \(error)", metadata: ["event": "start_failed"])
            throw ExitCode.startFailed
        }
    }

    private static func serve(
        name: String, options: DaemonOptions, policy: SeccompPolicy, logger: Logger,
        makeService: @Sendable (DaemonEnvironment) throws -> any DaemonService
    ) async throws {
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
            throw DaemonError.startup("\(error)")
        }
        let termination = TerminationSignals()

        var sandbox = ColoSandboxStatus()
        if options.noSandbox {
            logger.warning("running without sandbox (--no-sandbox)", metadata: ["event": "sandbox_skipped"])
        } else {
            do {
                try Privileges.dropAllCapabilities()
                try policy.install()
            } catch {
                throw DaemonError.sandbox(error)
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
                        message.errno = outcome.errno
                        return message
                    }
                    return ControlReply(.sandboxProbe(reply))
                case .some(let body):
                    if let reply = await service.handle(body, context: context) { return reply }
                    context.fds.forEach { try? $0.close() }
                    return .error(.unknownRequest, "\(name) does not serve this request")
                case .none:
                    return .error(.unknownRequest, "empty request body")
                }
            }
        } catch {
            throw DaemonError.socket(error)
        }
        selfStatus.record(server: server)
        server.start()

        let notifier = ServiceNotifier()
        notifier.ready(status: "serving \(path)")
        logger.info("\(name) ready", metadata: [
            "event": "daemon_ready", "socket": "\(path)", "socket_origin": "\(origin)",
            "version": "\(coloVersion)",
        ])
        let watchdog = notifier.watchdogInterval.map { interval in
            Task.detached {
                while !Task.isCancelled {
                    notifier.watchdogPing()
                    try? await Task.sleep(for: interval / 2)
                }
            }
        }

        let signal = await termination.next()
        notifier.stopping()
        logger.info("\(name) stopping", metadata: ["event": "daemon_stopping", "signal": "\(signal)"])
        watchdog?.cancel()
        server.stop()
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

/// SIGTERM and SIGINT, delivered as an awaitable event instead of killing the
/// process, so the daemon can tell systemd it is stopping and stop cleanly.
final class TerminationSignals: Sendable {
    // Only kept alive here; never touched after init.
    nonisolated(unsafe) private let sources: [any DispatchSourceSignal]
    private let received = Mutex<(signal: Int32?, waiter: CheckedContinuation<Int32, Never>?)>((nil, nil))

    init() {
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGTERM, SIGINT] {
            Glibc.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            sources.append(source)
        }
        self.sources = sources
        for (source, number) in zip(sources, [SIGTERM, SIGINT]) {
            source.setEventHandler { [self] in deliver(number) }
            source.resume()
        }
    }

    private func deliver(_ number: Int32) {
        let waiter = received.withLock { state -> CheckedContinuation<Int32, Never>? in
            if state.signal == nil { state.signal = number }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: number)
    }

    /// Waits for the first termination signal.
    func next() async -> Int32 {
        await withCheckedContinuation { continuation in
            let already = received.withLock { state -> Int32? in
                if let signal = state.signal { return signal }
                state.waiter = continuation
                return nil
            }
            if let already { continuation.resume(returning: already) }
        }
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
