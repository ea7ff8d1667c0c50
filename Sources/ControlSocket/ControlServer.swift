import Durations
import ColoProtocol
import Glibc
import Logging
import SwiftProtobuf
import Synchronization
import SystemPackage

/// Which peers may use a control socket: a set of uids, checked against the
/// kernel's SO_PEERCRED record of the connecting process.
public struct PeerPolicy: Sendable, Equatable {
    public var allowedUIDs: Set<UInt32>

    public init(allowedUIDs: Set<UInt32>) {
        self.allowedUIDs = allowedUIDs
    }

    public func allows(_ peer: PeerCredentials) -> Bool {
        allowedUIDs.contains(peer.uid)
    }
}

/// What a handler learns about a request besides its message.
public struct ControlRequestContext: Sendable {
    /// Who sent it.
    public let peer: PeerCredentials
    /// The fds the request carried, exactly `fd_count` of them, in order. The
    /// handler owns them: it keeps or closes each.
    public let fds: [FileDescriptor]
}

/// A handler's answer: a response body and the fds to attach.
public struct ControlReply: Sendable {
    public var body: ColoResponse.OneOf_Body
    public var fds: [FileDescriptor]
    /// Close `fds` in this process once sent (they were opened for the peer
    /// only); false when the daemon keeps using them.
    public var closeFdsAfterSending: Bool

    public init(_ body: ColoResponse.OneOf_Body, fds: [FileDescriptor] = [], closeFdsAfterSending: Bool = false) {
        self.body = body
        self.fds = fds
        self.closeFdsAfterSending = closeFdsAfterSending
    }

    /// A typed error answer.
    public static func error(_ code: ColoErrorCode, _ message: String) -> ControlReply {
        ControlReply(.error(ColoError(code, message)))
    }
}

/// Serves one daemon's control protocol on a listening SEQPACKET socket.
///
/// Each connection has a thread of its own that reads a request, runs the
/// handler and sends the reply, so connections never wait on each other and
/// a client may pipeline any number of requests on one connection (the
/// kernel's socket buffer pushes back when it sends faster than the daemon
/// answers). Handlers are synchronous and should be quick: long operations
/// are started by one request and observed by later ones.
///
/// Daemons deliberately do not run handlers on Swift concurrency: on Linux
/// its executor is libdispatch's worker pool, whose monitor reads
/// /proc/<tid>/stat at run time and aborts when the seccomp filter refuses
/// the open. Threads we own need no such access.
///
/// Bad input never reaches the handler:
/// - an undecodable or oversized datagram is answered with an id-0 error and
///   the connection is closed;
/// - a body the daemon does not serve gets ERROR_CODE_UNKNOWN_REQUEST;
/// - fds beyond the envelope's `fd_count` are closed; too few is an error;
/// - a peer whose uid the policy does not allow gets an id-0 error and is
///   disconnected before any request is read.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ColoRequest, ControlRequestContext) -> ControlReply

    private let listener: SeqpacketSocket
    private let policy: PeerPolicy
    private let logger: Logger
    private let handler: Handler
    private let wakeup: WakeupPipe
    private let sendTimeout: Duration
    private let served = Atomic<UInt64>(0)
    private let refused = Atomic<UInt64>(0)

    /// - Parameters:
    ///   - listener: a listening socket (bound here or handed over by systemd).
    ///   - sendTimeout: how long a reply may wait on a client that does not
    ///     read before that client is disconnected.
    public init(listener: SeqpacketSocket, policy: PeerPolicy, logger: Logger,
                sendTimeout: Duration = .seconds(5),
                handler: @escaping Handler) throws(ControlSocketError) {
        self.listener = listener
        self.policy = policy
        self.logger = logger
        self.handler = handler
        self.sendTimeout = sendTimeout
        self.wakeup = try WakeupPipe()
    }

    /// Requests answered without error since start.
    public var requestsServed: UInt64 { served.load(ordering: .relaxed) }
    /// Requests and connections refused with an error since start.
    public var requestsRefused: UInt64 { refused.load(ordering: .relaxed) }

    /// Starts accepting connections on a thread of its own.
    public func start() {
        spawnThread(name: "control-accept") { [self] in acceptLoop() }
    }

    /// Stops accepting and ends every connection's reader. Requests already
    /// running finish and their replies are still sent if the peer listens.
    public func stop() {
        wakeup.signal()
    }

    private func acceptLoop() {
        while true {
            do {
                switch try listener.waitReadable(orWakeup: wakeup.readEnd, timeout: nil) {
                case .wakeup: return
                case .timedOut: continue
                case .readable: break
                }
                let socket = try listener.accept()
                admit(socket)
            } catch {
                logger.error("accept failed", metadata: ["error": "\(error)"])
                // A persistent failure (EMFILE) must not spin the CPU.
                usleep(100_000)
            }
        }
    }

    private func admit(_ socket: SeqpacketSocket) {
        let connection = Connection(socket: socket)
        let peer: PeerCredentials
        do {
            peer = try socket.peerCredentials()
            try socket.setSendTimeout(sendTimeout)
        } catch {
            logger.warning("dropping connection", metadata: ["error": "\(error)"])
            return
        }
        guard policy.allows(peer) else {
            refused.add(1, ordering: .relaxed)
            logger.warning("peer not allowed", metadata: [
                "event": "peer_refused", "peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)",
            ])
            connection.sendConnectionError(.permissionDenied, "uid \(peer.uid) may not use this socket")
            return
        }
        spawnThread(name: "control-conn") { [self] in readLoop(connection, peer: peer) }
    }

    private func readLoop(_ connection: Connection, peer: PeerCredentials) {
        while true {
            let datagram: ReceivedDatagram
            do {
                switch try connection.socket.waitReadable(orWakeup: wakeup.readEnd, timeout: nil) {
                case .wakeup: connection.shutdown(); return
                case .timedOut: continue
                case .readable: break
                }
                guard let received = try connection.socket.receive(maxBytes: ControlProtocolLimits.maxDatagramBytes) else {
                    return
                }
                datagram = received
            } catch {
                logger.warning("control connection failed", metadata: ["error": "\(error)", "peer_pid": "\(peer.pid)"])
                connection.shutdown()
                return
            }
            switch validate(datagram) {
            case .rejected(let error):
                datagram.fds.forEach { try? $0.close() }
                refused.add(1, ordering: .relaxed)
                logger.warning("bad datagram, closing connection", metadata: [
                    "event": "bad_request", "error": "\(error.message)", "peer_pid": "\(peer.pid)",
                ])
                connection.sendConnectionError(error.code, error.message)
                return
            case .accepted(let request):
                let expected = Int(request.fdCount)
                // Extra fds are closed here, never leaked into the daemon.
                datagram.fds.dropFirst(expected).forEach { try? $0.close() }
                guard datagram.fds.count >= expected else {
                    datagram.fds.forEach { try? $0.close() }
                    refuse(request, connection, .missingFd,
                           "request declares \(expected) fds but \(datagram.fds.count) arrived")
                    continue
                }
                guard request.body != nil else {
                    refuse(request, connection, .unknownRequest,
                           "this daemon serves no request with that body")
                    continue
                }
                let context = ControlRequestContext(peer: peer, fds: Array(datagram.fds.prefix(expected)))
                let reply = handler(request, context)
                if case .error = reply.body {
                    refused.add(1, ordering: .relaxed)
                } else {
                    served.add(1, ordering: .relaxed)
                }
                connection.send(reply, id: request.id, logger: logger)
            }
        }
    }

    private func refuse(_ request: ColoRequest, _ connection: Connection, _ code: ColoErrorCode, _ message: String) {
        refused.add(1, ordering: .relaxed)
        connection.send(.error(code, message), id: request.id, logger: logger)
    }

    private enum Validation {
        case accepted(ColoRequest)
        case rejected(ColoError)
    }

    private func validate(_ datagram: ReceivedDatagram) -> Validation {
        if datagram.truncated {
            return .rejected(ColoError(.oversized, "datagram exceeds \(ControlProtocolLimits.maxDatagramBytes) bytes"))
        }
        if datagram.fdsTruncated {
            return .rejected(ColoError(.malformed, "more than \(SeqpacketSocket.maxFdsPerDatagram) fds in one datagram"))
        }
        do {
            let request = try ColoRequest(serializedBytes: datagram.bytes)
            guard request.id != 0 else {
                return .rejected(ColoError(.malformed, "request id 0 is reserved"))
            }
            return .accepted(request)
        } catch {
            return .rejected(ColoError(.malformed, "not a colo.control.Request: \(error)"))
        }
    }
}

/// One accepted connection, closed when its thread lets go of it.
private final class Connection: Sendable {
    let socket: SeqpacketSocket

    init(socket: SeqpacketSocket) {
        self.socket = socket
    }

    deinit {
        // Closing a Unix socket with unread datagrams makes the peer's next
        // read fail with ECONNRESET before it sees the reason we sent it. After
        // shutdown nothing new can arrive, so empty the queue, then close.
        // (Datagrams read without a control buffer have their fds discarded
        // by the kernel, never installed here.)
        _ = Glibc.shutdown(socket.fd.rawValue, Int32(SHUT_RDWR))
        var scratch = [UInt8](repeating: 0, count: 256)
        while recv(socket.fd.rawValue, &scratch, scratch.count, Int32(MSG_DONTWAIT)) > 0 {}
        socket.close()
    }

    func send(_ reply: ControlReply, id: UInt64, logger: Logger) {
        var response = ColoResponse()
        response.id = id
        response.fdCount = UInt32(reply.fds.count)
        response.body = reply.body
        do {
            let bytes: [UInt8] = try response.serializedBytes()
            try socket.send(bytes, fds: reply.fds)
        } catch {
            logger.warning("reply not delivered", metadata: ["error": "\(error)", "request_id": "\(id)"])
            shutdown()
        }
        if reply.closeFdsAfterSending {
            reply.fds.forEach { try? $0.close() }
        }
    }

    /// Sends an id-0 error (the reason for closing) and closes.
    func sendConnectionError(_ code: ColoErrorCode, _ message: String) {
        var response = ColoResponse()
        response.body = .error(ColoError(code, message))
        if let bytes: [UInt8] = try? response.serializedBytes() {
            try? socket.send(bytes)
        }
        shutdown()
    }

    /// Ends the conversation both ways now; the fd itself closes in deinit.
    func shutdown() {
        _ = Glibc.shutdown(socket.fd.rawValue, Int32(SHUT_RDWR))
    }
}
