import Durations
import ArgumentParser
import Checkpointing
import ControlSocket
import Glibc
import PeerAuthentication
import RAMStream
import SharedMemory

/// checkpointd's data path: RAM streaming throughput with 1, 2 and 4 page
/// channels beside loopback TCP and memcpy bandwidth, and the checkpoint
/// pause (request to the secondary's commit acknowledged) for several dirty
/// set sizes beside the copy bound, all measured in the same run. A primary
/// and a secondary replicator run in this process over loopback TCP: the
/// same code the daemons run, without the control-socket hop (a few tens of
/// microseconds, see `colobench ipc`).
struct CheckpointBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "RAM streaming throughput and checkpoint pause beside loopback TCP and memcpy bandwidth.")

    @Option(name: .customLong("ram-mib"), help: "Guest RAM in MiB.")
    var ramMiB = 1024

    @Option(help: "Checkpoints measured per dirty-set size.")
    var iterations = 20

    @Option(help: "Page channels for the pause figures.")
    var channels = 2

    @Option(name: .customLong("dirty-mib"), help: "Dirty-set sizes in MiB, comma-separated.")
    var dirtyMiB = "0,16,64,256"

    @Option(help: "Background-transfer runs: the guest dirties the set over this interval (ms) while rounds move it.")
    var intervalMs = 500

    func validate() throws {
        guard ramMiB >= 64 && ramMiB <= 16384 else { throw ValidationError("--ram-mib must be 64...16384") }
        guard iterations >= 2 else { throw ValidationError("--iterations must be at least 2") }
        guard (1...CheckpointLink.maxPageChannels).contains(channels) else { throw ValidationError("--channels must be 1...16") }
        guard sizes.allSatisfy({ $0 >= 0 && $0 <= ramMiB }) else { throw ValidationError("--dirty-mib sizes must fit in RAM") }
    }

    private var sizes: [Int] { dirtyMiB.split(separator: ",").compactMap { Int($0) } }

    func run() throws {
        let memcpy1 = memcpyBandwidth(threads: 1)
        let memcpy2 = memcpyBandwidth(threads: 2)
        let loopback = try loopbackBandwidth()
        print("CPUs available:                   \(availableCPUs())")
        print("memcpy bandwidth, 1 thread:       \(gbps(memcpy1))  (baseline)")
        print("memcpy bandwidth, 2 threads:      \(gbps(memcpy2))  ratio \(format(memcpy2 / memcpy1))x")
        print("loopback TCP, 1 stream:           \(gbps(loopback))  (baseline: the copy bound's bandwidth)")

        for count in [1, 2, 4] {
            let bench = try Pair(ramMiB: ramMiB, channels: count)
            // The first pass also faults in the colo-cache (a first touch
            // per page); the second is the steady state of every later round.
            let cold = try bench.streamAll()
            let warm = try bench.streamAll()
            print("RAM streaming, \(count) channel\(count == 1 ? " " : "s"):        \(gbps(warm))"
                + "  ratio to loopback \(format(warm / loopback))x  (first pass, cache cold: \(gbps(cold)))")
        }

        let bench = try Pair(ramMiB: ramMiB, channels: channels)
        _ = try bench.streamAll()
        _ = try bench.checkpoint(PageBitmap(pageCount: bench.pageCount))
        print("checkpoint pause, \(ramMiB) MiB RAM, \(channels) channels, \(iterations) checkpoints each:")
        print("  dirty    p50        p99        copy bound  p50/bound  mode")
        for size in sizes {
            var samples: [Double] = []
            for iteration in 0..<iterations {
                let dirty = bench.dirty(mebibytes: size, seed: iteration)
                samples.append(try bench.checkpoint(dirty))
            }
            report(size: size, samples: samples, loopback: loopback, mode: "all at pause")
        }
        for size in sizes where size > 0 {
            var samples: [Double] = []
            for iteration in 0..<max(2, iterations / 2) {
                samples.append(try bench.checkpointWithBackgroundRounds(mebibytes: size, seed: iteration,
                                                                        interval: intervalMs, slices: 10))
            }
            report(size: size, samples: samples, loopback: loopback,
                   mode: "background rounds, dirtied over \(intervalMs) ms")
        }
    }

    private func report(size: Int, samples: [Double], loopback: Double, mode: String) {
        var latencies = LatencySamples(capacity: samples.count)
        samples.forEach { latencies.record(UInt64($0)) }
        let p50 = latencies.percentile(0.5), p99 = latencies.percentile(0.99)
        let bound = Double(size << 20) / loopback * 1e9
        let ratio = size == 0 ? "-" : format(p50 / bound)
        print("  \(pad("\(size) MiB", 8)) \(pad(milliseconds(p50), 10)) \(pad(milliseconds(p99), 10)) "
            + "\(pad(milliseconds(bound), 11)) \(pad(ratio + (size == 0 ? "" : "x"), 10)) \(mode)")
    }

    /// Bytes per second memcpy moves between two prefaulted 256 MiB buffers.
    private func memcpyBandwidth(threads: Int) -> Double {
        let size = 256 << 20
        let source = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        let destination = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer {
            source.deallocate()
            destination.deallocate()
        }
        memset(source, 1, size)
        memset(destination, 2, size)
        let buffers = Buffers(source: source, destination: destination)
        var best = 0.0
        for _ in 0..<3 {
            let start = monotonicNanoseconds()
            parallel(threads) { index in
                let share = size / threads
                memcpy(buffers.destination + index * share, buffers.source + index * share, share)
            }
            best = max(best, Double(size) * 1e9 / Double(monotonicNanoseconds() - start))
        }
        return best
    }

    /// Bytes per second one loopback TCP stream carries, 1 MiB writes.
    private func loopbackBandwidth() throws -> Double {
        let (sender, receiver) = try tcpPairs(1)[0]
        let total = 2 << 30
        let chunk = 1 << 20
        let done = Semaphore()
        spawnThread(name: "bench-sink") {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
            var received = 0
            while received < total {
                let count = recv(receiver, buffer, chunk, Int32(MSG_WAITALL))
                if count <= 0 { break }
                received += count
            }
            buffer.deallocate()
            done.signal()
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        memset(buffer, 3, chunk)
        let start = monotonicNanoseconds()
        var sent = 0
        while sent < total {
            let count = send(sender, buffer, chunk, Int32(MSG_NOSIGNAL))
            guard count > 0 else { break }
            sent += count
        }
        done.wait()
        let rate = Double(total) * 1e9 / Double(monotonicNanoseconds() - start)
        buffer.deallocate()
        close(sender)
        close(receiver)
        return rate
    }
}

/// A primary and a secondary replicator over loopback TCP, RAM filled with
/// non-zero data (zero pages would flatter the figures).
private final class Pair {
    let primaryRAM: MemoryMapping
    let secondaryRAM: MemoryMapping
    let primary: PrimaryReplicator
    let secondary: SecondaryReplica
    let pageCount: Int

    init(ramMiB: Int, channels: Int) throws {
        let size = ramMiB << 20
        pageCount = size / PageFrame.pageSize
        let key = try PeerKey(bytes: Array("colobench checkpoint pair key...".utf8))
        func memory() throws -> MemoryMapping {
            try MemoryMapping(memfd: Memfd.create(name: "bench-ram", size: size, sealedSize: true), writable: true)
        }
        primaryRAM = try memory()
        secondaryRAM = try memory()
        let cache = try memory()
        for page in 0..<pageCount {
            (primaryRAM.base + page * PageFrame.pageSize).initializeMemory(as: UInt64.self, repeating: UInt64(page) | 1,
                                                                           count: PageFrame.pageSize / 8)
        }
        let pairs = try tcpPairs(channels + 1)
        let options = ReplicationOptions(peerTimeout: .seconds(30))
        let secondaryLink = Box<CheckpointLink>()
        let done = Semaphore()
        spawnThread(name: "bench-attach") {
            secondaryLink.value = try? CheckpointLink.establish(
                controlFD: pairs[0].1, pageFDs: pairs.dropFirst().map(\.1), primary: false, key: key,
                memoryBytes: size, timeout: .seconds(30))
            done.signal()
        }
        let primaryLink = try CheckpointLink.establish(controlFD: pairs[0].0, pageFDs: pairs.dropFirst().map(\.0),
                                                 primary: true, key: key, memoryBytes: size, timeout: .seconds(30))
        done.wait()
        guard let link = secondaryLink.value else { throw ValidationError("the secondary did not pair") }
        primary = PrimaryReplicator(memory: primaryRAM, link: primaryLink, options: options)
        secondary = SecondaryReplica(memory: secondaryRAM, cache: cache, link: link, options: options)
    }

    deinit {
        primary.close()
        secondary.close()
    }

    /// Sends every page as a pre-copy round; bytes per second until the
    /// secondary has them all.
    func streamAll() throws -> Double {
        let before = secondary.progress
        let start = monotonicNanoseconds()
        _ = try primary.queueRound(nil)
        while secondary.progress.pagesReceived - before.pagesReceived < UInt64(pageCount) {
            if let failure = secondary.failure ?? primary.failure { throw ValidationError(failure) }
            usleep(200)
        }
        let elapsed = monotonicNanoseconds() - start
        return Double(secondary.progress.bytesReceived - before.bytesReceived) * 1e9 / Double(elapsed)
    }

    /// Rewrites `mebibytes` of randomly chosen pages; their bitmap.
    func dirty(mebibytes: Int, seed: Int) -> PageBitmap {
        var bitmap = PageBitmap(pageCount: pageCount)
        var generator = SplitMix(seed: UInt64(seed) &+ 1)
        let target = mebibytes << 8
        while bitmap.count < target {
            let page = Int(generator.next() % UInt64(pageCount))
            guard !bitmap.contains(page) else { continue }
            bitmap.insert(page)
            write(page: page, value: generator.next() | 1)
        }
        return bitmap
    }

    private func write(page: Int, value: UInt64) {
        (primaryRAM.base + page * PageFrame.pageSize).initializeMemory(as: UInt64.self, repeating: value,
                                                                       count: PageFrame.pageSize / 8)
    }

    /// One checkpoint of `dirty` on both sides; nanoseconds from the request
    /// to the acknowledged commit.
    func checkpoint(_ dirty: PageBitmap) throws -> Double {
        let secondary = self.secondary
        let committed = Box<Bool>()
        let done = Semaphore()
        spawnThread(name: "bench-commit") {
            committed.value = (try? secondary.commit(guestDirty: PageBitmap(pageCount: dirty.pageCount))) != nil
            done.signal()
        }
        let report = try primary.takeCheckpoint(dirty, deviceState: Array(repeating: 7, count: 16 << 10))
        done.wait()
        guard committed.value == true else { throw ValidationError(secondary.failure ?? "commit failed") }
        return Double(report.totalNanoseconds)
    }

    /// The guest dirties `mebibytes` in `slices` steps spread over
    /// `interval` ms; after each step but the last, the step's bitmap is
    /// queued as a round (as supervisord would, fetching vmmd's dirty log
    /// periodically). The checkpoint then has only the last step and
    /// whatever the rounds have not sent yet.
    func checkpointWithBackgroundRounds(mebibytes: Int, seed: Int, interval: Int, slices: Int) throws -> Double {
        var generator = SplitMix(seed: UInt64(seed) &+ 1000)
        let perSlice = (mebibytes << 8) / slices
        var last = PageBitmap(pageCount: pageCount)
        let start = monotonicNanoseconds()
        for slice in 0..<slices {
            var bitmap = PageBitmap(pageCount: pageCount)
            while bitmap.count < perSlice {
                let page = Int(generator.next() % UInt64(pageCount))
                bitmap.insert(page)
                write(page: page, value: generator.next() | 1)
            }
            if slice == slices - 1 {
                last = bitmap
            } else {
                _ = try primary.queueRound(bitmap)
            }
            let due = start + UInt64(interval * (slice + 1) / slices) * 1_000_000
            let now = monotonicNanoseconds()
            if due > now { usleep(UInt32((due - now) / 1000)) }
        }
        return try checkpoint(last)
    }
}

private struct Buffers: @unchecked Sendable {
    let source: UnsafeMutableRawPointer
    let destination: UnsafeMutableRawPointer
}

/// A value set by another thread before a semaphore is signalled.
private final class Box<Value>: @unchecked Sendable {
    var value: Value?
}

private final class Semaphore: @unchecked Sendable {
    private var semaphore = sem_t()
    init() { sem_init(&semaphore, 0, 0) }
    deinit { sem_destroy(&semaphore) }
    func signal() { sem_post(&semaphore) }
    func wait() { while sem_wait(&semaphore) != 0 {} }
}

/// Runs body(0..<threads) on that many threads and waits for all.
private func parallel(_ threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = Semaphore()
    for index in 1..<max(1, threads) {
        spawnThread(name: "bench-\(index)") {
            body(index)
            done.signal()
        }
    }
    body(0)
    for _ in 1..<max(1, threads) { done.wait() }
}

/// A small deterministic generator: the same pages dirtied in every run.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Connected loopback TCP pairs (client, server).
private func tcpPairs(_ count: Int) throws -> [(Int32, Int32)] {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(listener) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            bind(listener, raw, length) == 0 && listen(listener, 32) == 0 && getsockname(listener, raw, &length) == 0
        }
    }
    guard bound else { throw ValidationError("cannot listen on 127.0.0.1: \(String(cString: strerror(errno)))") }
    return try (0..<count).map { _ in
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
        }
        guard connected == 0 else { throw ValidationError("cannot connect on loopback") }
        return (client, accept(listener, nil, nil))
    }
}

private func gbps(_ bytesPerSecond: Double) -> String {
    format(bytesPerSecond / 1e9) + " GB/s"
}

private func milliseconds(_ nanoseconds: Double) -> String {
    format(nanoseconds / 1e6) + " ms"
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}
