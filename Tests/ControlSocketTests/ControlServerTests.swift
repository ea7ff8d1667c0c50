import ColoProtocol
@testable import ControlSocket
import Foundation
import Logging
import SharedMemory
import SystemPackage
import XCTest

/// The control server and client against each other over real sockets.
final class ControlServerTests: XCTestCase {
    private var directory: String!

    override func setUp() {
        directory = NSTemporaryDirectory() + "colo-ipc-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private var path: String { directory + "/test.sock" }

    /// A server whose `status` replies carry, as their state, the request's
    /// position; a status request from a `delayFor` entry waits that long.
    private func startServer(
        policy: PeerPolicy = PeerPolicy(allowedUIDs: [geteuid()]),
        handler: @escaping ControlServer.Handler
    ) throws -> ControlServer {
        let listener = try SeqpacketSocket.listen(at: path)
        let server = try ControlServer(listener: listener, policy: policy, logger: Logger(label: "test"),
                                       handler: handler)
        server.start()
        return server
    }

    private static func status(_ state: String) -> ControlReply {
        var status = ColoDaemonStatus()
        status.state = state
        return ControlReply(.status(status))
    }

    /// A peer that answers three requests in reverse order: each caller
    /// still gets its own reply.
    func testRepliesAreMatchedByIDWhenAnsweredOutOfOrder() throws {
        let listener = try SeqpacketSocket.listen(at: path)
        defer { listener.close() }
        let peerDone = DispatchSemaphore(value: 0)
        spawnThread(name: "reverse-peer") {
            defer { peerDone.signal() }
            guard let connection = try? listener.accept() else { return }
            defer { connection.close() }
            var requests: [ColoRequest] = []
            while requests.count < 3, let datagram = try? connection.receive(maxBytes: 4096) {
                if let request = try? ColoRequest(serializedBytes: datagram.bytes) { requests.append(request) }
            }
            for request in requests.reversed() {
                var response = ColoResponse()
                response.id = request.id
                var status = ColoDaemonStatus()
                status.state = "reply-\(request.id)"
                response.body = .status(status)
                try? connection.send(try! response.serializedBytes())
            }
            _ = try? connection.receive(maxBytes: 16)
        }
        let client = try ControlClient(connectingTo: path)
        let states = LockedBox<[String]>([])
        // Three threads, since the peer answers only once all three asked.
        let callsDone = DispatchSemaphore(value: 0)
        for index in 0..<3 {
            spawnThread(name: "caller-\(index)") {
                defer { callsDone.signal() }
                guard let response = try? client.call(.status(ColoStatusRequest())),
                      case .status(let status) = response.message.body else { return }
                XCTAssertEqual(status.state, "reply-\(response.message.id)")
                states.mutate { $0.append(status.state) }
            }
        }
        for _ in 0..<3 { callsDone.wait() }
        client.close()
        peerDone.wait()
        XCTAssertEqual(Set(states.get()), ["reply-1", "reply-2", "reply-3"])
    }

    func testManyRequestsInFlightOnOneConnection() throws {
        let server = try startServer { request, _ in Self.status("\(request.id)") }
        defer { server.stop() }
        let client = try ControlClient(connectingTo: path)
        defer { client.close() }
        let failures = LockedBox<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 200) { _ in
            do {
                let response = try client.call(.status(ColoStatusRequest()))
                guard case .status(let status) = response.message.body,
                      status.state == "\(response.message.id)" else { return failures.mutate { $0 += 1 } }
            } catch {
                failures.mutate { $0 += 1 }
            }
        }
        XCTAssertEqual(failures.get(), 0)
        XCTAssertEqual(server.requestsServed, 200)
    }

    func testSlowDaemonCostsTheTimeoutNotAHang() throws {
        let server = try startServer { _, _ in
            usleep(5_000_000)
            return Self.status("late")
        }
        defer { server.stop() }
        let client = try ControlClient(connectingTo: path)
        defer { client.close() }
        let started = ContinuousClock.now
        do {
            _ = try client.call(.status(ColoStatusRequest()), timeout: .milliseconds(200))
            XCTFail("a reply arrived before the handler finished")
        } catch {
            XCTAssertEqual(error, .timedOut(operation: "waiting for the reply"))
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(2))
    }

    func testSeveralFdsTravelWithOneMessageAndExtrasAreClosed() throws {
        let received = LockedBox<[Int32]>([])
        let server = try startServer { _, context in
            // Read what each fd holds, then answer with two fresh memfds.
            var contents: [Int32] = []
            for fd in context.fds {
                var value: Int32 = 0
                _ = pread(fd.rawValue, &value, 4, 0)
                contents.append(value)
                try? fd.close()
            }
            received.set(contents)
            let replies = (0..<2).map { index in makeMemfd(holding: Int32(100 + index)) }
            return ControlReply(.status(ColoDaemonStatus()), fds: replies, closeFdsAfterSending: true)
        }
        defer { server.stop() }
        let client = try ControlClient(connectingTo: path)
        defer { client.close() }

        let sent = (0..<2).map { makeMemfd(holding: Int32($0)) } + [makeMemfd(holding: 2, name: "colo-extra")]
        defer { sent.forEach { try? $0.close() } }
        // Declare two fds but attach three: the server must close the third
        // before the handler runs, so by the reply only our own copy is open.
        var request = ColoRequest()
        request.body = .status(ColoStatusRequest())
        request.fdCount = 2
        let response = try client.send(request, fds: sent, timeout: .seconds(5))
        XCTAssertEqual(received.get(), [0, 1])
        XCTAssertEqual(openFds(named: "colo-extra"), 1, "the undeclared fd leaked into the server")
        XCTAssertEqual(response.fds.count, 2)
        for (index, fd) in response.fds.enumerated() {
            var value: Int32 = 0
            XCTAssertEqual(pread(fd.rawValue, &value, 4, 0), 4)
            XCTAssertEqual(value, Int32(100 + index))
            try fd.close()
        }
    }

    func testTooFewFdsIsAnErrorNotACrash() throws {
        let server = try startServer { _, _ in Self.status("served") }
        defer { server.stop() }
        let client = try ControlClient(connectingTo: path)
        defer { client.close() }
        var request = ColoRequest()
        request.body = .status(ColoStatusRequest())
        request.fdCount = 2
        let response = try client.send(request, fds: [], timeout: .seconds(5))
        guard case .error(let error) = response.message.body else { return XCTFail("expected an error") }
        XCTAssertEqual(error.code, .missingFd)
        // The connection goes on.
        _ = try client.call(.status(ColoStatusRequest()))
    }

    func testPeerWithAnotherUIDIsRefusedWithAReason() throws {
        let server = try startServer(policy: PeerPolicy(allowedUIDs: [geteuid() &+ 4242])) { _, _ in
            Self.status("should not be served")
        }
        defer { server.stop() }
        let client = try ControlClient(connectingTo: path)
        defer { client.close() }
        do {
            _ = try client.call(.status(ColoStatusRequest()))
            XCTFail("a refused peer was served")
        } catch {
            guard case .refused(let reason) = error else { return XCTFail("unexpected \(error)") }
            XCTAssertEqual(reason.code, .permissionDenied)
        }
        XCTAssertEqual(server.requestsRefused, 1)
    }

    func testBadDatagramsCloseOnlyTheirConnection() throws {
        let server = try startServer { _, _ in Self.status("served") }
        defer { server.stop() }
        var unknownBody = ColoRequest()
        unknownBody.id = 9
        let unknown: [UInt8] = try unknownBody.serializedBytes()
        var valid = ColoRequest()
        valid.id = 5
        valid.body = .status(ColoStatusRequest())
        let validBytes: [UInt8] = try valid.serializedBytes()
        let cases: [(String, [UInt8], ColoErrorCode, closes: Bool)] = [
            ("random bytes", [0xff, 0xff, 0xff, 0xff, 0x0f, 0x01], .malformed, true),
            ("truncated", Array(validBytes.dropLast()), .malformed, true),
            ("oversized", [UInt8](repeating: 0x08, count: ControlProtocolLimits.maxDatagramBytes + 100), .oversized, true),
            ("unknown body", unknown, .unknownRequest, false),
        ]
        for (name, bytes, code, closes) in cases {
            let raw = try SeqpacketSocket.connect(to: path)
            defer { raw.close() }
            try raw.send(bytes)
            let reply = try XCTUnwrap(try raw.receive(maxBytes: 4096), name)
            let response = try ColoResponse(serializedBytes: reply.bytes)
            guard case .error(let error) = response.body else { return XCTFail("\(name): no error") }
            XCTAssertEqual(error.code, code, name)
            XCTAssertEqual(response.id, closes ? 0 : 9, name)
            if closes {
                XCTAssertEqual(try raw.waitReadable(orWakeup: nil, timeout: .seconds(2)), .readable, name)
                XCTAssertNil(try raw.receive(maxBytes: 4096), "\(name): connection should be closed")
            }
        }
        // Another client is still served.
        let client = try ControlClient(connectingTo: path)
        defer { client.close() }
        _ = try client.call(.status(ColoStatusRequest()))
    }

    func testDaemonThatIsDownIsAnErrorImmediately() throws {
        XCTAssertThrowsError(try ControlClient(connectingTo: directory + "/absent.sock")) { error in
            guard case .system(_, let errno) = error as? ControlSocketError else { return XCTFail("\(error)") }
            XCTAssertEqual(errno, .noSuchFileOrDirectory)
        }
    }

    /// The fd crosses a process boundary: Python (a different process and
    /// language, using the kernel's SCM_RIGHTS) receives the memfd our
    /// server sends and reads what we wrote through it; then it sends a
    /// memfd of its own that our server reads.
    func testMemfdWrittenHereIsReadInAnotherProcessAndBack() throws {
        let fromPeer = LockedBox<String>("")
        let server = try startServer { _, context in
            if let fd = context.fds.first {
                var buffer = [UInt8](repeating: 0, count: 64)
                let count = pread(fd.rawValue, &buffer, 64, 0)
                fromPeer.set(String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self))
                try? fd.close()
                return Self.status("got-fd")
            }
            let memfd = makeMemfd(text: "written by the swift server")
            return ControlReply(.status(ColoDaemonStatus()), fds: [memfd], closeFdsAfterSending: true)
        }
        defer { server.stop() }
        var first = ColoRequest()
        first.id = 1
        first.body = .status(ColoStatusRequest())
        var second = ColoRequest()
        second.id = 2
        second.fdCount = 1
        second.body = .status(ColoStatusRequest())
        let script = """
        import os, socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(sys.argv[1])
        s.send(bytes.fromhex(sys.argv[2]))
        msg, fds, flags, addr = socket.recv_fds(s, 4096, 4)
        assert len(fds) == 1, fds
        print(os.pread(fds[0], 64, 0).rstrip(bytes(1)).decode())
        fd = os.memfd_create("from-python")
        os.write(fd, b"written by python")
        socket.send_fds(s, [bytes.fromhex(sys.argv[3])], [fd])
        s.recv(4096)
        """
        let output = try runPython(script, arguments: [
            path, try hex(first.serializedBytes()), try hex(second.serializedBytes()),
        ])
        XCTAssertEqual(output.trimmingCharacters(in: .whitespacesAndNewlines), "written by the swift server")
        XCTAssertEqual(fromPeer.get(), "written by python")
    }
}

// MARK: - helpers

final class LockedBox<Value: Sendable>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func set(_ newValue: Value) { lock.withLock { value = newValue } }
    func mutate(_ change: (inout Value) -> Void) { lock.withLock { change(&value) } }
    func get() -> Value { lock.withLock { value } }
}

func makeMemfd(holding value: Int32, name: String = "colo-test") -> FileDescriptor {
    let fd = try! Memfd.create(name: name, size: 4096, sealedSize: false).fd
    var value = value
    _ = pwrite(fd.rawValue, &value, 4, 0)
    return fd
}

func makeMemfd(text: String) -> FileDescriptor {
    let fd = try! Memfd.create(name: "colo-test", size: 4096, sealedSize: false).fd
    var bytes = Array(text.utf8)
    _ = pwrite(fd.rawValue, &bytes, bytes.count, 0)
    return fd
}

/// How many of this process's fds are memfds created with `name`.
func openFds(named name: String) -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.filter { entry in
        let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")
        return target?.hasPrefix("/memfd:\(name) ") ?? false
    }.count
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

func runPython(_ script: String, arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    process.arguments = ["-c", script] + arguments
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    XCTAssertEqual(process.terminationStatus, 0, "python peer failed")
    return String(decoding: data, as: UTF8.self)
}
