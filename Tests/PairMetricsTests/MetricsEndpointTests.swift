import Glibc
import PairConfiguration
import PairMetrics
import XCTest

final class MetricsEndpointTests: XCTestCase {
    private var endpoint: MetricsEndpoint!
    private let metrics = PairMetrics()

    override func setUpWithError() throws {
        let metrics = metrics
        endpoint = try MetricsEndpoint(listeningOn: SocketAddress(host: IPAddress("127.0.0.1")!, port: 0)) {
            metrics.exposition()
        }
        endpoint.start()
    }

    override func tearDown() {
        endpoint.stop()
        endpoint = nil
    }

    func testGetMetricsServesThePrometheusText() throws {
        metrics.recordCheckpoint(id: 7, trigger: .periodic, pause: .milliseconds(3))
        let response = try exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK\r\n"), response)
        XCTAssertTrue(response.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), response)
        let body = try XCTUnwrap(response.components(separatedBy: "\r\n\r\n").last)
        XCTAssertTrue(response.contains("Content-Length: \(body.utf8.count)\r\n"), response)
        let samples = try PrometheusText.parse(body)
        XCTAssertEqual(samples[#"colo_checkpoints_total{trigger="periodic"}"#], 1)
        // A query string and HTTP/1.0 are fine; HEAD gets the head only.
        XCTAssertTrue(try exchange("GET /metrics?x=1 HTTP/1.0\r\n\r\n").hasPrefix("HTTP/1.1 200 OK"))
        let head = try exchange("HEAD /metrics HTTP/1.1\r\n\r\n")
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 200 OK") && head.hasSuffix("\r\n\r\n"), head)
    }

    /// Each bad request gets a clear status, and the endpoint serves on.
    func testBadRequestsGetClearStatuses() throws {
        let cases: [(String, String)] = [
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            ("GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            ("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 405 Method Not Allowed"),
            ("DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
            ("GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 505"),
            ("GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            ("hello\n\n", "HTTP/1.1 400 Bad Request"),
            ("GET  /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            ("GET metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            ("GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            ("G(T /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            ("GET /m\u{1}etrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            ("GET /metrics HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000) + "\r\n\r\n", "HTTP/1.1 431"),
            (String(repeating: "A", count: 20000), "HTTP/1.1 431"),
        ]
        for (request, expected) in cases {
            let response = try exchange(request)
            XCTAssertTrue(response.hasPrefix(expected), "\(request.prefix(60).debugDescription): got \(response.prefix(80).debugDescription)")
        }
        XCTAssertTrue(try exchange("POST /metrics HTTP/1.1\r\n\r\n").contains("Allow: GET, HEAD\r\n"))
        XCTAssertTrue(try exchange("GET /metrics HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 200"))
    }

    /// A client that sends part of a head and stalls is answered 408 and
    /// cut off; one that hangs up mid-head is forgotten; neither stops the
    /// endpoint.
    func testStalledAndVanishingClientsDoNotStopTheEndpoint() throws {
        let stalled = try connect()
        defer { close(stalled) }
        send(stalled, "GET /metr")
        let vanished = try connect()
        send(vanished, "GET /metrics HT")
        close(vanished)
        XCTAssertTrue(try exchange("GET /metrics HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 200"),
                      "served while another client stalls")
        XCTAssertTrue(receiveAll(stalled).hasPrefix("HTTP/1.1 408 Request Timeout"))
    }

    func testTooManyConcurrentClientsAreTurnedAway() throws {
        var stalled: [Int32] = []
        defer { stalled.forEach { close($0) } }
        for _ in 0..<MetricsEndpoint.maxConnections {
            let fd = try connect()
            send(fd, "GET")
            stalled.append(fd)
        }
        usleep(200_000)
        XCTAssertTrue(try exchange("GET /metrics HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 503"))
    }

    func testListeningOnATakenAddressIsAClearError() {
        XCTAssertThrowsError(try MetricsEndpoint(listeningOn: endpoint.address) { "" }) { error in
            XCTAssertTrue("\(error)".contains("cannot listen on \(endpoint.address)"), "\(error)")
        }
    }

    /// Random and mutated heads never crash the parser, and every outcome is
    /// one of the three it may give.
    func testParserNeverCrashesOnRandomInput() {
        var generator = SystemRandomNumberGenerator()
        let seed = Array("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int.random(in: 0...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            } else {
                bytes = seed
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                }
            }
            switch HTTPRequestHead.parse(bytes) {
            case .incomplete: XCTAssertLessThan(bytes.count, HTTPRequestHead.maxBytes)
            case .request(let head): XCTAssertTrue(head.path.hasPrefix("/"))
            case .rejected(let status, _): XCTAssertGreaterThanOrEqual(status.rawValue, 400)
            }
        }
    }

    // MARK: - A raw HTTP client

    private func connect() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = endpoint.address.port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    private func send(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            // The server may answer and close before reading everything (431).
            guard sent > 0 else { return }
            offset += sent
        }
    }

    private func receiveAll(_ fd: Int32) -> String {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            received += buffer[..<count]
        }
        return String(decoding: received, as: UTF8.self)
    }

    private func exchange(_ request: String) throws -> String {
        let fd = try connect()
        defer { close(fd) }
        send(fd, request)
        return receiveAll(fd)
    }
}
