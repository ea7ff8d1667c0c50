import Durations
import ArgumentParser
import BlockDevice
import BlockImages
import BlockReplication
import ControlSocket
internal import CSupport
import Glibc
import Logging
import NBD
import Synchronization

/// blockd's NBD server beside qemu-nbd and nbdkit serving the same file,
/// all driven by the same client (blockd's NBD client) over Unix sockets in
/// the same run; and the replicated write latency beside a local write
/// plus a TCP loopback round trip.
struct NBDBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nbd",
        abstract: "NBD throughput and IOPS beside qemu-nbd and nbdkit; replicated write latency beside local + RTT.")

    @Option(help: "Size of the test image in MiB.")
    var sizeMiB = 256

    @Option(help: "Seconds per throughput or IOPS figure.")
    var seconds = 3.0

    @Option(help: "Turns per figure: the servers take turns of seconds/turns each, so load that drifts during the run weighs on all alike.")
    var turns = 6

    @Option(help: "Requests in flight for the random 4 KiB figures.")
    var queueDepth = 8

    @Flag(help: "Only the replicated write latency and its baselines.")
    var latencyOnly = false

    @Flag(help: "Replicated latency: run the primary's side on CPU 0 and the secondary's (its NBD server, the echo peer) on CPU 1, as on two hosts.")
    var pinHosts = false

    @Option(help: "Servers to measure, comma-separated (blockd, qemu-nbd, nbdkit): one alone for profiling.")
    var servers = "qemu-nbd,nbdkit,blockd"

    @Option(help: "Figures to measure, comma-separated (seq-read, seq-write, rand-read, rand-write).")
    var figures = "seq-read,seq-write,rand-read,rand-write"

    func run() throws {
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        let directory = "/tmp/colobench-nbd-\(getpid())"
        mkdir(directory, 0o700)
        var children: [pid_t] = []
        defer {
            children.forEach { kill($0, SIGKILL); var status: Int32 = 0; waitpid($0, &status, 0) }
            _ = system("rm -rf \(directory)")
        }
        let size = UInt64(sizeMiB) << 20
        if latencyOnly { return try replicatedLatency(directory: directory, size: size) }
        let path = "\(directory)/disk.img"
        let image = try RawImage(path: path, createSize: size)
        let fill = [UInt8](repeating: 0xa5, count: 1 << 20)
        for offset in stride(from: 0, to: size, by: 1 << 20) { try image.write(fill, at: offset) }

        let server = NBDServer(logger: Logger(label: "bench"))
        let catalog = NBDExportCatalog()
        catalog.add(NBDExport(name: "disk", device: image), asDefault: true)
        server.serve(listener: try listenUnix("\(directory)/blockd.sock"), catalog: catalog, name: "bench")
        children.append(spawn(["/usr/bin/qemu-nbd", "--format=raw", "--export-name=disk", "--persistent",
                               "--shared=16", "--socket=\(directory)/qemu.sock", path]))
        children.append(spawn(["/usr/bin/nbdkit", "--foreground", "--unix", "\(directory)/nbdkit.sock", "file", path]))

        let chosenServers = servers.split(separator: ",").map(String.init)
        let allFigures = [("seq-read", true, false), ("seq-write", true, true), ("rand-read", false, false),
                          ("rand-write", false, true)]
        let chosenFigures = figures.split(separator: ",").map(String.init)
        for name in chosenServers + chosenFigures
        where !["blockd", "qemu-nbd", "nbdkit"].contains(name) && !allFigures.contains(where: { $0.0 == name }) {
            throw ValidationError("unknown server or figure \(name)")
        }
        print("image \(sizeMiB) MiB (page-cached raw file); client: blockd's NBD client over a Unix socket;"
              + " servers take \(max(turns, 1)) turns of \(format(seconds / Double(max(turns, 1)))) s per figure")
        var amounts: [String: [String: (amount: Double, seconds: Double)]] = [:]
        let sockets = [("qemu-nbd", "qemu.sock"), ("nbdkit", "nbdkit.sock"), ("blockd", "blockd.sock")]
        for (figure, sequentially, writing) in allFigures where chosenFigures.contains(figure) {
            for _ in 0..<max(turns, 1) {
                for (name, socketPath) in sockets where chosenServers.contains(name) {
                    let connect = { () throws -> NBDClient in
                        try NBDClient.connect(fd: try self.connectUnix("\(directory)/\(socketPath)"), export: "disk")
                    }
                    // Each turn starts with the file written back: the previous
                    // turn's dirty pages must not slow the next server's.
                    try image.flush()
                    let slice = seconds / Double(max(turns, 1))
                    let measured = sequentially ? try sequential(connect, write: writing, size: size, for: slice)
                                                : try random(connect, write: writing, size: size, for: slice)
                    let sum = amounts[name, default: [:]][figure] ?? (0, 0)
                    amounts[name, default: [:]][figure] = (sum.amount + measured.amount, sum.seconds + measured.seconds)
                }
                if figure == "rand-write" {
                    // No server: the same writes by one thread of this process.
                    try image.flush()
                    let measured = try randomLocalWrites(image, size: size, for: seconds / Double(max(turns, 1)))
                    let sum = amounts["pwrite", default: [:]][figure] ?? (0, 0)
                    amounts["pwrite", default: [:]][figure] = (sum.amount + measured.amount, sum.seconds + measured.seconds)
                }
            }
        }
        let results = amounts.mapValues { $0.mapValues { $0.amount / $0.seconds } }
        let labels = ["seq-read": "sequential read, 1 MiB requests (MiB/s)",
                      "seq-write": "sequential write, 1 MiB requests (MiB/s)",
                      "rand-read": "random read 4 KiB, QD \(queueDepth) (IOPS)",
                      "rand-write": "random write 4 KiB, QD \(queueDepth) (IOPS)"]
        for (figure, _, _) in allFigures where chosenFigures.contains(figure) {
            var line = "\(labels[figure]!):"
            for name in ["blockd", "qemu-nbd", "nbdkit"] {
                if let value = results[name]?[figure] { line += " \(name) \(Int(value)) " }
            }
            if let ours = results["blockd"]?[figure] {
                for name in ["qemu-nbd", "nbdkit"] {
                    if let theirs = results[name]?[figure] { line += " ratio vs \(name) \(format(ours / theirs))x " }
                }
            }
            print(line)
        }
        if let local = results["pwrite"]?["rand-write"] {
            print("random write 4 KiB, pwrite by one thread of this process, no NBD (IOPS): \(Int(local))"
                  + (results["blockd"]?["rand-write"].map { "  blockd / pwrite \(format($0 / local))x" } ?? ""))
        }
        guard chosenServers.count == 3, chosenFigures.count == allFigures.count else { return }
        try replicatedLatency(directory: directory, size: size)
    }

    // MARK: Throughput

    /// MiB moved in about `duration` seconds, and the seconds it took.
    private func sequential(_ connect: () throws -> NBDClient, write: Bool, size: UInt64,
                            for duration: Double) throws -> (amount: Double, seconds: Double) {
        let client = try connect()
        defer { client.disconnect() }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5a)
        let start = monotonicNanoseconds()
        var bytes: UInt64 = 0
        var offset: UInt64 = 0
        // Four requests in flight, as a streaming copy keeps them.
        var inFlight: [NBDPendingRequest] = []
        while Double(monotonicNanoseconds() - start) < duration * 1e9 {
            if write {
                inFlight.append(try client.submit(.write, offset: offset, length: UInt32(chunk), payload: UnsafeRawBufferPointer(buffer)))
            } else {
                inFlight.append(try client.submit(.read, offset: offset, length: UInt32(chunk), destination: buffer))
            }
            if inFlight.count == 4 { try client.wait(inFlight.removeFirst()) }
            bytes += UInt64(chunk)
            offset = (offset + UInt64(chunk)) % size
        }
        for pending in inFlight { try client.wait(pending) }
        return (Double(bytes) / 1_048_576, Double(monotonicNanoseconds() - start) / 1e9)
    }

    /// Requests completed in about `duration` seconds, and the seconds it took.
    private func random(_ connect: () throws -> NBDClient, write: Bool, size: UInt64,
                        for duration: Double) throws -> (amount: Double, seconds: Double) {
        let client = try connect()
        defer { client.disconnect() }
        let depth = queueDepth
        let buffers = (0..<depth).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096) }
        defer { buffers.forEach { $0.deallocate() } }
        var rng = SystemRandomNumberGenerator()
        var inFlight: [NBDPendingRequest?] = Array(repeating: nil, count: depth)
        let start = monotonicNanoseconds()
        var operations = 0
        var slot = 0
        while Double(monotonicNanoseconds() - start) < duration * 1e9 {
            if let pending = inFlight[slot] { try client.wait(pending) }
            let offset = UInt64.random(in: 0..<(size / 4096), using: &rng) * 4096
            inFlight[slot] = write
                ? try client.submit(.write, offset: offset, length: 4096, payload: UnsafeRawBufferPointer(buffers[slot]))
                : try client.submit(.read, offset: offset, length: 4096, destination: buffers[slot])
            operations += 1
            slot = (slot + 1) % depth
        }
        for pending in inFlight.compactMap({ $0 }) { try client.wait(pending) }
        return (Double(operations), Double(monotonicNanoseconds() - start) / 1e9)
    }

    /// The random-write figure's writes made by one thread straight into
    /// the image: what the kernel allows without any NBD in the way.
    private func randomLocalWrites(_ image: RawImage, size: UInt64,
                                   for duration: Double) throws -> (amount: Double, seconds: Double) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5a)
        var rng = SystemRandomNumberGenerator()
        let start = monotonicNanoseconds()
        var operations = 0
        while Double(monotonicNanoseconds() - start) < duration * 1e9 {
            let offset = UInt64.random(in: 0..<(size / 4096), using: &rng) * 4096
            try image.write(UnsafeRawBufferPointer(buffer), at: offset, fua: false)
            operations += 1
        }
        return (Double(operations), Double(monotonicNanoseconds() - start) / 1e9)
    }

    // MARK: Replicated write latency

    private func replicatedLatency(directory: String, size: UInt64) throws {
        let iterations = 3000
        // Both images of the disk full of the same data, so every write is an
        // overwrite and every copy-before-write copies real sectors. Filled
        // by 4 KiB writes and synced, alike on both sides: on this kernel a
        // 4 KiB overwrite inside the large page-cache folio a 1 MiB write
        // leaves behind costs ~35 µs instead of ~4 µs.
        let local = try RawImage(path: "\(directory)/primary.img", createSize: size)
        let secondaryImage = try RawImage(path: "\(directory)/secondary.img", createSize: size)
        let fill = [UInt8](repeating: 0x96, count: 4096)
        for image in [local, secondaryImage] {
            for offset in stride(from: 0, to: size, by: 4096) { try image.write(fill, at: offset) }
            try image.flush()
        }
        let secondary = try SecondaryDisk(
            secondary: secondaryImage,
            active: try OverlayImage(path: "\(directory)/active.ovl", capacity: size),
            hidden: try OverlayImage(path: "\(directory)/hidden.ovl", capacity: size))
        // Threads inherit the CPUs of the thread that starts them.
        if pinHosts { pinCallingThread(toCPU: 1) }
        let server = NBDServer(logger: Logger(label: "bench"))
        let catalog = NBDExportCatalog()
        catalog.add(NBDExport(name: "disk", device: secondary.primaryWrites))
        let (near, far) = try tcpPair()
        server.serve(connection: far, catalog: catalog, peer: "bench")
        let echo = try EchoLink(pair: try tcpPair())
        let disk = ReplicatedDisk(local: local, logger: Logger(label: "bench"))
        try disk.replicate(to: try NBDClient.connect(fd: near, export: "disk"))
        if pinHosts { pinCallingThread(toCPU: 0) }

        let data = [UInt8](repeating: 0x3c, count: 4096)
        // The baselines are sampled in turn with the replicated write, so
        // the machine's load (other sessions compiling) weighs on all alike.
        let writeBytes = NBDRequest.size + data.count
        var localSamples = LatencySamples(capacity: iterations)
        var rttSamples = LatencySamples(capacity: iterations)
        var writeRTTSamples = LatencySamples(capacity: iterations)
        var replicatedSamples = LatencySamples(capacity: iterations)
        var rng = SystemRandomNumberGenerator()
        for index in 0..<(4 * iterations) {
            let offset = UInt64.random(in: 0..<(size / 4096), using: &rng) * 4096
            let start = monotonicNanoseconds()
            switch index % 4 {
            case 0:
                try local.write(data, at: offset)
                localSamples.record(monotonicNanoseconds() - start)
            case 1:
                echo.roundTrip(out: 64, back: 64)
                rttSamples.record(monotonicNanoseconds() - start)
            case 2:
                // What an NBD write puts on the wire: its header and data
                // out, a simple reply back.
                echo.roundTrip(out: writeBytes, back: 16)
                writeRTTSamples.record(monotonicNanoseconds() - start)
            default:
                try disk.write(data, at: offset)
                replicatedSamples.record(monotonicNanoseconds() - start)
            }
        }
        echo.close()
        // What the secondary does after acknowledging (off the latency path):
        // copy-before-write plus the write, in process.
        var applySamples = LatencySamples(capacity: iterations)
        let apply = secondary.primaryWrites
        for _ in 0..<iterations {
            let offset = UInt64.random(in: 0..<(size / 4096), using: &rng) * 4096
            let start = monotonicNanoseconds()
            try apply.write(data, at: offset)
            applySamples.record(monotonicNanoseconds() - start)
        }
        let local50 = localSamples.percentile(0.5), rtt50 = rttSamples.percentile(0.5)
        let writeRTT50 = writeRTTSamples.percentile(0.5)
        let replicated50 = replicatedSamples.percentile(0.5), replicated99 = replicatedSamples.percentile(0.99)
        print("4 KiB local write:          p50 \(formatMicroseconds(local50))  (baseline)")
        print("TCP loopback round trip:    p50 \(formatMicroseconds(rtt50))  (baseline, 64 B each way)")
        print("TCP loopback round trip of a write's bytes (\(writeBytes) B out, 16 B back): p50 \(formatMicroseconds(writeRTT50))")
        print("secondary apply (copy-before-write + write, in process, after the reply): p50 \(formatMicroseconds(applySamples.percentile(0.5)))")
        print("4 KiB replicated write:     p50 \(formatMicroseconds(replicated50))  p99 \(formatMicroseconds(replicated99))"
              + "  ratio p50 vs local + RTT \(format(replicated50 / (local50 + rtt50)))x  (goal ≤ 1.5x)"
              + "  vs local + the write's RTT \(format(replicated50 / (local50 + writeRTT50)))x")
    }

    private func pinCallingThread(toCPU cpu: Int32) {
        if colo_pin_thread_to_cpu(cpu) != 0 { print("could not pin to CPU \(cpu): errno \(errno)") }
    }

    /// A TCP loopback connection whose far end a thread of this process
    /// echoes: each message of `out` bytes is answered by `back` bytes.
    private final class EchoLink: @unchecked Sendable {
        private let near: Int32
        private var message = [UInt8](repeating: 1, count: 64 << 10)

        init(pair: (Int32, Int32)) throws {
            near = pair.0
            let far = pair.1
            spawnThread(name: "echo") {
                var bytes = [UInt8](repeating: 0, count: 64 << 10)
                var header = (out: UInt32(0), back: UInt32(0))
                while recv(far, &header, 8, Int32(MSG_WAITALL)) == 8,
                      recv(far, &bytes, Int(header.out) - 8, Int32(MSG_WAITALL)) == Int(header.out) - 8 {
                    _ = send(far, bytes, Int(header.back), Int32(MSG_NOSIGNAL))
                }
                Glibc.close(far)
            }
        }

        /// One round trip; the first 8 bytes out say the sizes.
        func roundTrip(out: Int, back: Int) {
            message.withUnsafeMutableBytes { bytes in
                bytes.storeBytes(of: (UInt32(out), UInt32(back)), as: (UInt32, UInt32).self)
                _ = send(near, bytes.baseAddress, out, Int32(MSG_NOSIGNAL))
                var got = 0
                while got < back { got += max(0, recv(near, bytes.baseAddress! + got, back - got, 0)) }
            }
        }

        func close() {
            Glibc.close(near)
        }
    }

    // MARK: Sockets

    private func tcpPair() throws -> (Int32, Int32) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        listen(listener, 1)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) } }
        let server = accept(listener, nil, nil)
        close(listener)
        var one: Int32 = 1
        for fd in [client, server] { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4)) }
        return (client, server)
    }

    private func listenUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = unixAddress(path)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        listen(fd, 16)
        return fd
    }

    private func connectUnix(_ path: String) throws -> Int32 {
        for _ in 0..<500 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = unixAddress(path)
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if result == 0 { return fd }
            close(fd)
            usleep(20_000)
        }
        throw ValidationError("nothing listens at \(path)")
    }

    private func unixAddress(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        return address
    }

    private func spawn(_ arguments: [String]) -> pid_t {
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        posix_spawn(&pid, arguments[0], nil, nil, argv, environ)
        return pid
    }
}
