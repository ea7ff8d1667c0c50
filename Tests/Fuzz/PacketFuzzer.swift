// libFuzzer entry point for everything in proxyd that reads guest- or
// network-supplied bytes: the frame parsers, the frame-stream reader of the
// peer link, the comparison engine and the sequence rewriter. The first
// input byte picks the target; the rest is its input. Any trap (bounds,
// overflow, precondition) is a finding. Built and run by run-fuzzer.sh.
import FrameLink
import PacketComparison
import Packets
import SequenceRewriter

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 4 {
    case 0:
        _ = try? ParsedFrame.parse(input)
    case 1:
        var reader = FrameStreamReader()
        reader.feed(FrameStream.header())
        reader.feed(input)
        while let record = try? reader.next() { _ = record }
    case 2:
        driveEngine(frames(in: input))
    default:
        let rewriter = SequenceRewriter(capacity: 8)
        for (index, frame) in frames(in: input).enumerated() {
            var copy = frame
            if index % 2 == 0 { rewriter.guestOutput(&copy, at: UInt64(index)) } else { rewriter.guestInput(&copy, at: UInt64(index)) }
            _ = try? ParsedFrame.parse(copy)
        }
        rewriter.checkpointDone()
    }
    return 0
}

/// Splits input into frames: each is a 2-byte big-endian length, then the bytes.
func frames(in input: [UInt8]) -> [[UInt8]] {
    var result: [[UInt8]] = []
    var cursor = 0
    while cursor + 2 <= input.count {
        let length = Int(input[cursor]) << 8 | Int(input[cursor + 1])
        cursor += 2
        let end = min(input.count, cursor + length)
        result.append(Array(input[cursor..<end]))
        cursor = end
    }
    return result
}

/// Frames alternate between the primary and the secondary; a frame's first
/// byte (when odd) also triggers a checkpoint, a mark or time passing.
func driveEngine(_ frames: [[UInt8]]) {
    let engine = ComparisonEngine(settings: ComparisonSettings(compareTimeout: 1000, queueLimit: 16, idleFlowTimeout: 4000))
    var now: UInt64 = 0
    for (index, frame) in frames.enumerated() {
        now += 100
        if index % 2 == 0 { engine.primaryFrame(frame, at: now) } else { engine.secondaryFrame(frame, at: now) }
        switch frame.first.map({ $0 % 16 }) {
        case 1: engine.advance(to: now + 2000)
        case 3: engine.checkpointDone(at: now)
        case 5: engine.secondaryCheckpointMark()
        case 7: engine.releaseAll(at: now)
        default: engine.advance(to: now)
        }
        _ = engine.takeOutputs()
    }
}
