import ArgumentParser
import Glibc
import PacketComparison
import Packets
import SequenceRewriter

/// proxyd's per-frame work on one core, in this process: a TCP stream of
/// the primary guest (1448-byte segments) compared with the same bytes from
/// the secondary cut differently (1000-byte segments, other IP ids, TTL and
/// timestamps), and the secondary side's sequence rewriting, beside copying
/// the same frames (what merely reading each frame into a buffer costs),
/// measured in the same run. The end-to-end path through two proxyds and
/// kernel stacks is Tests/system/bench_proxyd.py.
struct ProxyBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Comparison and rewriting throughput on one core, beside copying the frames.")

    @Option(help: "Stream length in MiB.")
    var megabytes = 512

    func run() throws {
        let bytes = megabytes << 20
        let guest = MACAddress("52:54:00:00:00:02")!, client = MACAddress("02:00:00:00:00:01")!
        var primaryBuilder = PacketBuilder(sourceMAC: guest, destinationMAC: client,
                                           source: IPAddress("10.0.0.2")!, destination: IPAddress("10.0.0.1")!)
        var secondaryBuilder = primaryBuilder
        secondaryBuilder.identification = 9
        secondaryBuilder.timeToLive = 63
        let payload = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        func segments(_ builder: inout PacketBuilder, size: Int, isn: UInt32, timestamp: UInt32) -> [[UInt8]] {
            stride(from: 0, to: bytes, by: size).map { start in
                builder.identification &+= 1
                let options: [UInt8] = [1, 1, 8, 10] + [timestamp, 77].flatMap { value in
                    (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
                }
                return builder.tcp(sourcePort: 80, destinationPort: 40000, sequence: isn &+ UInt32(truncatingIfNeeded: start),
                                   acknowledgment: 5000, flags: .ack, options: options,
                                   payload: Array(payload[start ..< min(start + size, bytes)]))
            }
        }
        let primary = segments(&primaryBuilder, size: 1448, isn: 1000, timestamp: 100)
        let secondary = segments(&secondaryBuilder, size: 1000, isn: 1000, timestamp: 107)
        let secondaryOwnSpace = segments(&secondaryBuilder, size: 1000, isn: 900_000, timestamp: 107)
        let frameBytes = Double(primary.reduce(0) { $0 + $1.count } + secondary.reduce(0) { $0 + $1.count })

        var sink = 0
        var scratch = [UInt8](repeating: 0, count: 65_536)
        let copy = measure {
            // As a read does: into a buffer, then out into a frame of its own.
            for frame in primary + secondary {
                scratch.withUnsafeMutableBytes { target in
                    frame.withUnsafeBytes { target.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                }
                sink &+= Array(scratch[0 ..< frame.count]).count
            }
        }
        let engine = ComparisonEngine(settings: ComparisonSettings(compareTimeout: 1_000_000_000, queueLimit: 1 << 20))
        var released = 0
        let compare = measure {
            var next = 0
            for (index, frame) in primary.enumerated() {
                engine.primaryFrame(frame, at: UInt64(index))
                // The secondary keeps pace, a little behind.
                let due = min(secondary.count, (index + 1) * 1448 / 1000)
                while next < due {
                    engine.secondaryFrame(secondary[next], at: UInt64(index))
                    next += 1
                }
                engine.drainOutputs { if case .release = $0 { released += 1 } }
            }
            while next < secondary.count {
                engine.secondaryFrame(secondary[next], at: UInt64(primary.count))
                next += 1
            }
            engine.drainOutputs { if case .release = $0 { released += 1 } }
        }
        guard released == primary.count, engine.counters.checkpointsRequested == 0 else {
            throw ValidationError("comparison released \(released) of \(primary.count) frames")
        }
        let rewriter = SequenceRewriter()
        var synAck = secondaryBuilder.tcp(sourcePort: 80, destinationPort: 40000, sequence: 899_999, acknowledgment: 5000,
                                          flags: [.syn, .ack])
        rewriter.guestOutput(&synAck, at: 0)
        var ack = PacketBuilder(sourceMAC: client, destinationMAC: guest, source: IPAddress("10.0.0.1")!,
                                destination: IPAddress("10.0.0.2")!)
            .tcp(sourcePort: 40000, destinationPort: 80, sequence: 5000, acknowledgment: 1000, flags: .ack)
        rewriter.guestInput(&ack, at: 0)
        let secondaryBytes = Double(secondaryOwnSpace.reduce(0) { $0 + $1.count })
        let rewrite = measure {
            for frame in secondaryOwnSpace {
                var rewritten = frame
                rewriter.guestOutput(&rewritten, at: 1)
                sink &+= rewritten.count
            }
        }
        precondition(sink > 0)
        func gbit(_ count: Double, _ seconds: Double) -> Double { count * 8 / seconds / 1e9 }
        print("stream \(megabytes) MiB, primary 1448-byte and secondary 1000-byte segments, one core")
        print("copy both sides' frames (baseline):  \(format(gbit(frameBytes, copy), decimals: 2)) Gbit/s of frames")
        print("compare both sides:                  \(format(gbit(frameBytes, compare), decimals: 2)) Gbit/s of frames, "
            + "\(format(gbit(Double(bytes), compare), decimals: 2)) Gbit/s of the guest's stream  "
            + "(\(format(copy / compare, decimals: 2)) of the baseline)")
        print("rewrite the secondary's output:      \(format(gbit(secondaryBytes, rewrite), decimals: 2)) Gbit/s")
    }

    private func measure(_ body: () -> Void) -> Double {
        var start = timespec(), end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        body()
        clock_gettime(CLOCK_MONOTONIC, &end)
        return Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
    }
}
