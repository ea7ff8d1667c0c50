import ColoProtocol
import ControlSocket
internal import CSupport
import DaemonRuntime
import Glibc
import Logging
import PacketComparison
import Packets
import PeerAuthentication
import SequenceRewriter
import Synchronization
import SystemPackage

/// proxyd's control requests: attach (fds and role), then checkpoint
/// done, pass-through, counters and capture, each carried out by the
/// datapath thread and answered with the counters. A survivor in
/// pass-through (or whose peer link failed) may be attached again, as the
/// primary of a new pair after a resync: the old datapath ends and a new
/// one starts on the fds of the new request.
final class ProxyService: DaemonService {
    private let key: PeerKey?
    private let logger: Logger
    private let datapath = Mutex<Datapath?>(nil)

    init(key: PeerKey?, logger: Logger) {
        self.key = key
        self.logger = logger
    }

    var state: String {
        datapath.withLock { $0?.state.withLock { $0 } } ?? "detached"
    }

    func handle(_ body: ColoRequest.OneOf_Body, context: ControlRequestContext) -> ControlReply? {
        switch body {
        case let .proxyAttach(attach):
            return self.attach(attach, fds: context.fds)
        case .proxyCheckpointDone:
            context.fds.forEach { try? $0.close() }
            return call(.checkpointDone)
        case .proxyPassThrough:
            context.fds.forEach { try? $0.close() }
            return call(.passThrough)
        case let .proxyReplaceGuest(replace):
            guard replace.hasGuest else {
                context.fds.forEach { try? $0.close() }
                return .error(.invalidArgument, "guest fd is required")
            }
            guard Int(replace.guest.index) < context.fds.count else {
                context.fds.forEach { try? $0.close() }
                return .error(.missingFd, "guest names fd \(replace.guest.index), the request carries \(context.fds.count)")
            }
            let fd = context.fds[Int(replace.guest.index)]
            context.fds.filter { $0 != fd }.forEach { try? $0.close() }
            let reply = call(.replaceGuest(fd.rawValue))
            if case .error = reply.body { try? fd.close() }
            return reply
        case .proxyCounters:
            context.fds.forEach { try? $0.close() }
            return call(.counters)
        case let .proxyCapture(capture):
            guard capture.hasFile else {
                context.fds.forEach { try? $0.close() }
                return call(.capture(nil))
            }
            guard Int(capture.file.index) < context.fds.count else {
                context.fds.forEach { try? $0.close() }
                return .error(.missingFd, "capture names fd \(capture.file.index), the request carries \(context.fds.count)")
            }
            let fd = context.fds[Int(capture.file.index)]
            context.fds.filter { $0 != fd }.forEach { try? $0.close() }
            let reply = call(.capture(fd.rawValue))
            if case .error = reply.body { try? fd.close() }
            return reply
        default:
            return nil
        }
    }

    private func call(_ command: DatapathCommand) -> ControlReply {
        guard let datapath = datapath.withLock({ $0 }) else {
            return .error(.failedPrecondition, "proxyd is not attached")
        }
        switch datapath.mailbox.call(command) {
        case let .success(counters): return ControlReply(.proxyCounters(counters))
        case let .failure(error): return .error(error.code, error.message)
        }
    }

    private func attach(_ request: ColoProxyAttach, fds: [FileDescriptor]) -> ControlReply {
        var used: Set<Int> = []
        func closeUnused() {
            for (index, fd) in fds.enumerated() where !used.contains(index) { try? fd.close() }
        }
        func fail(_ code: ColoErrorCode, _ message: String) -> ControlReply {
            used.removeAll()
            closeUnused()
            return .error(code, message)
        }
        func fd(_ present: Bool, _ reference: ColoFdRef, _ name: String, required: Bool) throws(AttachError) -> Int32? {
            guard present else {
                if required { throw AttachError(code: .invalidArgument, message: "\(name) fd is required for this role") }
                return nil
            }
            let index = Int(reference.index)
            guard index < fds.count else {
                throw AttachError(code: .missingFd, message: "\(name) names fd \(index), the request carries \(fds.count)")
            }
            guard used.insert(index).inserted else {
                throw AttachError(code: .invalidArgument, message: "\(name) reuses fd \(index)")
            }
            return fds[index].rawValue
        }

        let configuration: DatapathConfiguration
        do throws(AttachError) {
            let role = request.role
            guard [.primary, .secondary, .passThrough].contains(role) else {
                throw AttachError(code: .invalidArgument, message: "role must be primary, secondary or pass-through")
            }
            let compares = role == .primary
            let linked = role != .passThrough
            let external = try fd(request.hasExternal, request.external, "external", required: role != .secondary)
            let guest = try fd(request.hasGuest, request.guest, "guest", required: true)!
            let peer = try fd(request.hasPeer, request.peer, "peer", required: linked)
            let events = try fd(request.hasEvents, request.events, "events", required: compares)
            if linked && key == nil {
                throw AttachError(code: .failedPrecondition, message: "a peer link needs the key: start proxyd with --peer-key")
            }
            var mac: MACAddress?
            if !request.guestMac.isEmpty {
                guard let parsed = MACAddress(request.guestMac) else {
                    throw AttachError(code: .invalidArgument, message: "guest_mac '\(request.guestMac)' is not a MAC address")
                }
                mac = parsed
            }
            var addresses: [IPAddress] = []
            for text in request.guestAddresses {
                guard let address = IPAddress(text) else {
                    throw AttachError(code: .invalidArgument, message: "guest address '\(text)' is not an IP address")
                }
                addresses.append(address)
            }
            if compares && request.compareTimeoutMs == 0 {
                throw AttachError(code: .invalidArgument, message: "compare_timeout_ms must be at least 1")
            }
            let timeout = UInt64(request.compareTimeoutMs) * 1_000_000
            let limit = request.queueLimit == 0 ? 4096 : Int(request.queueLimit)
            configuration = DatapathConfiguration(
                role: role, external: external, guest: guest, peer: peer, events: events,
                settings: ComparisonSettings(compareTimeout: timeout, queueLimit: limit),
                guestMAC: mac, guestAddresses: addresses)
        } catch {
            return fail(error.code, error.message)
        }

        let previous = datapath.withLock { $0 }
        let rewriter: SequenceRewriter?
        let finished: WakeupPipe
        do throws(AttachError) {
            if let previous { rewriter = try end(previous) } else { rewriter = nil }
            do {
                finished = try WakeupPipe()
            } catch {
                throw AttachError(code: .internal, message: "\(error)")
            }
        } catch {
            return fail(error.code, error.message)
        }
        let created = Datapath(configuration, rewriter: rewriter, finished: finished, key: key, logger: logger)
        let installed = datapath.withLock { current in
            guard current === previous else { return false }
            current = created
            return true
        }
        guard installed else { return fail(.failedPrecondition, "proxyd is attached already (another attach won)") }
        closeUnused()
        logger.info(previous == nil ? "attached" : "attached anew", metadata: [
            "event": previous == nil ? "attached" : "reattached", "role": "\(request.role)",
            "compare_timeout_ms": "\(request.compareTimeoutMs)", "queue_limit": "\(configuration.settings.queueLimit)",
            "rewritten_connections": "\(rewriter?.connectionCount ?? 0)",
        ])
        spawnThread(name: "datapath") { created.run() }
        // Not through the mailbox: the datapath may spend seconds
        // authenticating the link first. Later requests show its progress.
        var counters = ColoProxyCounters()
        counters.role = request.role
        counters.state = created.state.withLock { $0 }
        return ControlReply(.proxyCounters(counters))
    }

    /// Ends the current datapath for a new attach, if its state allows it
    /// (pass-through, link failed, stopped), waits until its thread has
    /// closed its fds, and returns the rewriter it leaves behind.
    private func end(_ previous: Datapath) throws(AttachError) -> SequenceRewriter? {
        if previous.state.withLock({ $0 }) == "authenticating" {
            throw AttachError(code: .failedPrecondition, message: "proxyd is attached already and authenticating its peer link")
        }
        if case let .failure(error) = previous.mailbox.call(.detach), previous.state.withLock({ $0 }) != "stopped" {
            throw AttachError(code: error.code, message: error.message)
        }
        var ended = [pollfd(fd: previous.finished.readEnd.rawValue, events: Int16(POLLIN), revents: 0)]
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while ended[0].revents == 0 {
            let now = monotonicNanoseconds()
            guard now < deadline else {
                throw AttachError(code: .timeout, message: "the previous datapath did not end within 5 s")
            }
            _ = colo_poll_ns(&ended, 1, Int64(deadline - now))
        }
        return previous.rewriter
    }

    private struct AttachError: Error {
        let code: ColoErrorCode
        let message: String
    }
}
