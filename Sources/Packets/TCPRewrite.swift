/// In-place rewriting of a TCP segment's sequence and acknowledgment numbers,
/// the TCP checksum updated incrementally (the payload is not read again).
public enum TCPRewrite {
    /// Writes `sequence` and/or `acknowledgment` into the segment `tcp`
    /// (parsed from `frame`) and corrects its checksum.
    /// `sackShift` is subtracted from every SACK block edge (they name
    /// sequence numbers of the other direction, as the acknowledgment does).
    /// `timestampValueShift` is added to the timestamp option's value,
    /// `timestampEchoShift` subtracted from its echo reply.
    public static func rewrite(_ frame: inout [UInt8], tcp: TCPHeader, sequence: UInt32? = nil,
                               acknowledgment: UInt32? = nil, sackShift: UInt32 = 0,
                               timestampValueShift: UInt32 = 0, timestampEchoShift: UInt32 = 0) {
        let checksumOffset = tcp.offset + 16
        var checksum = frame.u16(at: checksumOffset)
        func replace(_ value: UInt32, at offset: Int) {
            for word in 0..<2 {
                let position = offset + 2 * word
                let old = frame.u16(at: position)
                let new = UInt16(truncatingIfNeeded: value >> (16 - 16 * word))
                checksum = InternetChecksum.updated(checksum, replacing: old, with: new)
                frame.setU16(new, at: position)
            }
        }
        if let sequence { replace(sequence, at: tcp.offset + 4) }
        if let acknowledgment { replace(acknowledgment, at: tcp.offset + 8) }
        if sackShift != 0 || timestampValueShift != 0 || timestampEchoShift != 0 {
            // The options were validated when `tcp` was parsed.
            var cursor = tcp.offset + TCPHeader.minimumLength
            let end = tcp.offset + tcp.headerLength
            while cursor < end {
                let kind = frame[cursor]
                if kind == 0 { break }
                if kind == 1 { cursor += 1; continue }
                let length = Int(frame[cursor + 1])
                if kind == 5 && sackShift != 0 {
                    for edge in stride(from: cursor + 2, to: cursor + length, by: 4) {
                        replace(frame.u32(at: edge) &- sackShift, at: edge)
                    }
                }
                if kind == 8 {
                    if timestampValueShift != 0 { replace(frame.u32(at: cursor + 2) &+ timestampValueShift, at: cursor + 2) }
                    if timestampEchoShift != 0 { replace(frame.u32(at: cursor + 6) &- timestampEchoShift, at: cursor + 6) }
                }
                cursor += length
            }
        }
        frame.setU16(checksum, at: checksumOffset)
    }
}
