import ArgumentParser
import ColoProtocol
import ControlSocket
import Glibc
import Logging
import SharedMemory
import Synchronization
import SystemPackage

/// The local control protocol's cost: round trip and throughput of a small
/// request, and fds passed per second, beside a raw SEQPACKET echo measured
/// in the same run.
struct IPCBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipc",
        abstract: "Control-socket round trip, requests/s and fds/s beside a raw SEQPACKET echo.")

    @Option(help: "Round trips measured for each latency figure.")
    var iterations = 20_000

    @Option(help: "Concurrent callers for the throughput figure.")
    var callers = 4

    @Option(help: "fds attached to each request of the fd figure.")
    var fdsPerRequest = 8

    func validate() throws {
        guard iterations >= 100 else { throw ValidationError("--iterations must be at least 100") }
        guard (1...64).contains(callers) else { throw ValidationError("--callers must be 1...64") }
        guard (1...SeqpacketSocket.maxFdsPerDatagram).contains(fdsPerRequest) else {
            throw ValidationError("--fds-per-request must be 1...\(SeqpacketSocket.maxFdsPerDatagram)")
        }
    }

    func run() throws {
        let raw = try rawEchoRoundTrips()
        let directory = "/tmp/colobench-\(getpid())"
        mkdir(directory, 0o700)
        defer { unlink("\(directory)/bench.sock"); rmdir(directory) }
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        let server = try ControlServer(listener: SeqpacketSocket.listen(at: "\(directory)/bench.sock"),
                                       policy: PeerPolicy(allowedUIDs: [geteuid()]),
                                       logger: Logger(label: "bench")) { request, context in
            context.fds.forEach { try? $0.close() }
            var status = ColoDaemonStatus()
            status.daemon = "bench"
            status.pid = getpid()
            return ControlReply(.status(status))
        }
        server.start()
        defer { server.stop() }
        let client = try ControlClient(connectingTo: "\(directory)/bench.sock")
        defer { client.close() }

        // Warm up both paths before measuring.
        for _ in 0..<500 { _ = try client.call(.status(ColoStatusRequest())) }
        var control = LatencySamples(capacity: iterations)
        for _ in 0..<iterations {
            let start = monotonicNanoseconds()
            _ = try client.call(.status(ColoStatusRequest()))
            control.record(monotonicNanoseconds() - start)
        }
        let requestsPerSecond = try throughput(client: client)
        let fdsPerSecond = try fdThroughput(client: client)

        let rawP50 = raw.percentile(0.5), rawP99 = raw.percentile(0.99)
        let p50 = control.percentile(0.5), p99 = control.percentile(0.99)
        print("raw SEQPACKET echo round trip:   p50 \(formatMicroseconds(rawP50))  p99 \(formatMicroseconds(rawP99))  (baseline)")
        print("control request round trip:      p50 \(formatMicroseconds(p50))  p99 \(formatMicroseconds(p99))"
            + "  ratio p50 \(format(p50 / rawP50))x  p99 \(format(p99 / rawP99))x  (goal ≤ 2x)")
        print("control requests per second:     \(Int(requestsPerSecond)) with \(callers) callers on one connection"
            + "  (raw echo: \(Int(1e9 / rawP50)) sequential)")
        print("fds passed per second:           \(Int(fdsPerSecond)) (\(fdsPerRequest) per request)")
    }

    /// A thread echoes each datagram back on one end of a socketpair; the
    /// other end writes and reads: the least one round trip can cost.
    private func rawEchoRoundTrips() throws -> LatencySamples {
        let (near, far) = try SeqpacketSocket.pair()
        var request = ColoRequest()
        request.id = 1
        request.body = .status(ColoStatusRequest())
        let bytes: [UInt8] = try request.serializedBytes()
        spawnThread(name: "raw-echo") {
            while let datagram = try? far.receive(maxBytes: ControlProtocolLimits.maxDatagramBytes) {
                try? far.send(datagram.bytes)
            }
            far.close()
        }
        for _ in 0..<500 {
            try near.send(bytes)
            _ = try near.receive(maxBytes: ControlProtocolLimits.maxDatagramBytes)
        }
        var samples = LatencySamples(capacity: iterations)
        for _ in 0..<iterations {
            let start = monotonicNanoseconds()
            try near.send(bytes)
            _ = try near.receive(maxBytes: ControlProtocolLimits.maxDatagramBytes)
            samples.record(monotonicNanoseconds() - start)
        }
        near.close()
        return samples
    }

    /// Requests per second with several threads calling on one connection.
    private func throughput(client: ControlClient) throws -> Double {
        let perCaller = iterations / callers
        let done = Mutex(0)
        let finished = Mutex(false)
        let start = monotonicNanoseconds()
        for index in 0..<callers {
            spawnThread(name: "caller-\(index)") {
                for _ in 0..<perCaller { _ = try? client.call(.status(ColoStatusRequest())) }
                let all = done.withLock { count -> Bool in
                    count += 1
                    return count == callers
                }
                if all { finished.withLock { $0 = true } }
            }
        }
        while !finished.withLock({ $0 }) { usleep(1000) }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        return Double(perCaller * callers) / seconds
    }

    /// fds per second: requests each carrying `fdsPerRequest` memfds, which
    /// the server receives and closes.
    private func fdThroughput(client: ControlClient) throws -> Double {
        let fds = try (0..<fdsPerRequest).map { _ in
            try Memfd.create(name: "bench", size: 4096, sealedSize: false).fd
        }
        defer { fds.forEach { try? $0.close() } }
        let count = iterations / 4
        let start = monotonicNanoseconds()
        for _ in 0..<count {
            _ = try client.call(.status(ColoStatusRequest()), fds: fds)
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        return Double(count * fdsPerRequest) / seconds
    }
}
