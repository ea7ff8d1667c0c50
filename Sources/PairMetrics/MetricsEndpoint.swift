import Durations
import ControlSocket
import Glibc
import PairConfiguration
import PeerLink
import Synchronization

/// A failure to open the metrics endpoint.
public struct MetricsEndpointError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// The Prometheus scrape endpoint: HTTP/1.1, `GET /metrics` (and `HEAD`)
/// only, one request per connection. Thread-based like the rest of a daemon:
/// an accept thread, and one short-lived thread per connection, at most
/// `maxConnections` at once (beyond that a scrape is answered 503 at once).
/// Every request is bounded in size (`HTTPRequestHead.maxBytes`) and time
/// (`requestTimeout`); anything but a well-formed scrape gets a clear 4xx/5xx
/// and the connection is closed. The listening socket is opened by `init`,
/// before the daemon's seccomp filter goes on.
public final class MetricsEndpoint: Sendable {
    public static let maxConnections = 4
    public static let requestTimeout: Duration = .seconds(2)
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    private let listener: Int32
    private let exposition: @Sendable () -> String
    private let running = Atomic<Bool>(true)
    private let connections = Atomic<Int>(0)
    /// Where the endpoint listens (with the port the kernel chose for port 0).
    public let address: SocketAddress

    /// Binds `address`; `exposition` renders the body of each scrape.
    public init(listeningOn address: SocketAddress,
                exposition: @escaping @Sendable () -> String) throws(MetricsEndpointError) {
        let fd: Int32
        do {
            fd = try TCPConnection.listen(on: address)
        } catch {
            throw MetricsEndpointError(description: "metrics endpoint cannot listen on \(address): \(error)")
        }
        listener = fd
        self.exposition = exposition
        var bound = address
        if let port = Self.localPort(of: fd) { bound.port = port }
        self.address = bound
    }

    private static func localPort(of fd: Int32) -> UInt16? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        let family = storage.ss_family
        return withUnsafePointer(to: &storage) { pointer in
            family == sa_family_t(AF_INET6)
                ? pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
                : pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
    }

    deinit {
        close(listener)
    }

    /// Starts serving on a thread of its own.
    public func start() {
        spawnThread(name: "metrics-accept") { [self] in acceptLoop() }
    }

    /// Stops accepting; connections being served finish.
    public func stop() {
        running.store(false, ordering: .sequentiallyConsistent)
        shutdown(listener, Int32(SHUT_RDWR))
    }

    private func acceptLoop() {
        while running.load(ordering: .sequentiallyConsistent) {
            let fd: Int32
            do {
                fd = try TCPConnection.accept(from: listener, timeout: .milliseconds(500))
            } catch {
                if case .timedOut = error { continue }
                // A client that reset before accept, or the listener shut
                // down by stop(): either way, go round and check `running`.
                usleep(10_000)
                continue
            }
            if connections.add(1, ordering: .sequentiallyConsistent).newValue > Self.maxConnections {
                respond(on: fd, .serviceUnavailable, body: "too many scrapes at once\n")
                close(fd)
                connections.subtract(1, ordering: .sequentiallyConsistent)
                continue
            }
            spawnThread(name: "metrics-conn") { [self] in
                serve(fd)
                close(fd)
                connections.subtract(1, ordering: .sequentiallyConsistent)
            }
        }
    }

    /// Reads one request head (bounded in bytes and time) and answers it.
    private func serve(_ fd: Int32) {
        let deadline = ContinuousClock.now + Self.requestTimeout
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while true {
            switch HTTPRequestHead.parse(received) {
            case .request(let head):
                answer(head, on: fd)
                return
            case .rejected(let status, let reason):
                respond(on: fd, status, body: "\(reason)\n")
                return
            case .incomplete:
                break
            }
            let remaining = deadline - .now
            guard remaining > .zero else {
                respond(on: fd, .requestTimeout, body: "request head not received within \(Self.requestTimeout)\n")
                return
            }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(clamping: remaining.millisecondsRoundedUp))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, HTTPRequestHead.maxBytes + 1 - received.count), 0) }
            if count < 0 && errno == EINTR { continue }
            // Closed or failed before a complete head: nobody to answer.
            guard count > 0 else { return }
            received.append(contentsOf: chunk[..<count])
        }
    }

    private func answer(_ head: HTTPRequestHead, on fd: Int32) {
        guard head.path == "/metrics" else {
            respond(on: fd, .notFound, body: "only /metrics is served here\n")
            return
        }
        guard head.method == "GET" || head.method == "HEAD" else {
            respond(on: fd, .methodNotAllowed, extraHeaders: ["Allow: GET, HEAD"],
                    body: "\(head.method) is not allowed on /metrics (use GET)\n")
            return
        }
        let body = exposition()
        respond(on: fd, .ok, contentType: Self.contentType, body: body, headOnly: head.method == "HEAD")
    }

    private func respond(on fd: Int32, _ status: HTTPStatus, contentType: String = "text/plain; charset=utf-8",
                         extraHeaders: [String] = [], body: String, headOnly: Bool = false) {
        let bodyBytes = Array(body.utf8)
        var head = "HTTP/1.1 \(status.rawValue) \(status.reasonPhrase)\r\n"
        head += "Content-Type: \(contentType)\r\n"
        head += "Content-Length: \(bodyBytes.count)\r\n"
        for header in extraHeaders { head += "\(header)\r\n" }
        head += "Connection: close\r\n\r\n"
        var bytes = Array(head.utf8)
        if !headOnly { bytes += bodyBytes }
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if sent < 0 && errno == EINTR { continue }
            // The client went away; nothing more to do for it.
            guard sent > 0 else { return }
            offset += sent
        }
        shutdown(fd, Int32(SHUT_WR))
        discardInput(fd)
    }

    /// Reads what the client still sends (a body, the rest of an oversized
    /// head) for a moment, bounded: closing a socket with unread input
    /// resets the connection, and the client could lose the answer.
    private func discardInput(_ fd: Int32) {
        var chunk = [UInt8](repeating: 0, count: 4096)
        var discarded = 0
        let deadline = ContinuousClock.now + .milliseconds(200)
        while discarded < 256 * 1024 {
            let remaining = deadline - .now
            guard remaining > .zero else { return }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(clamping: remaining.millisecondsRoundedUp)) > 0 else { return }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return }
            discarded += count
        }
    }
}
