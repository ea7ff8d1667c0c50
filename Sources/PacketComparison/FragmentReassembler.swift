import Packets

/// Reassembles IP datagrams from fragments (one reassembler per side), so
/// that the two guests' output is compared as datagrams even when the two
/// fragment it differently or give it different IP ids.
struct FragmentReassembler<Tag> {
    /// Datagrams being reassembled at once; beyond this the oldest is given up.
    static var maximumAssemblies: Int { 64 }
    /// Fragments per datagram; a 64 KiB datagram in 1280-byte IPv6 fragments needs 52.
    static var maximumFragments: Int { 64 }

    struct Assembly {
        var tag: Tag
        var pieces: [FragmentPiece] = []
        var totalLength: Int?
        let isIPv6: Bool
        let started: UInt64
    }

    enum Outcome {
        case incomplete
        case complete(Tag, Classified, malformed: Bool)
        /// The datagram cannot be reassembled (overlong, too many pieces,
        /// inconsistent): its tag, so held frames are not forgotten.
        case invalid(Tag)
    }

    private(set) var assemblies: [FragmentKey: Assembly] = [:]

    var count: Int { assemblies.count }

    /// Adds a piece. `makeTag` is called for the first piece of a datagram;
    /// `update` for every piece (the primary's tag collects its frames).
    mutating func add(_ key: FragmentKey, _ piece: FragmentPiece, isIPv6: Bool, at now: UInt64,
                      makeTag: () -> Tag, update: (inout Tag) -> Void) -> Outcome {
        if assemblies[key] == nil {
            assemblies[key] = Assembly(tag: makeTag(), isIPv6: isIPv6, started: now)
        }
        update(&assemblies[key]!.tag)
        var assembly = assemblies[key]!
        let end = piece.offset + piece.data.count
        guard end <= 65_535, assembly.pieces.count < Self.maximumFragments,
              piece.moreFragments || assembly.totalLength == nil || assembly.totalLength == end,
              assembly.totalLength.map({ end <= $0 }) ?? true else {
            assemblies[key] = nil
            return .invalid(assembly.tag)
        }
        if !piece.moreFragments { assembly.totalLength = end }
        assembly.pieces.append(piece)
        guard let total = assembly.totalLength, let bytes = Self.contiguous(assembly.pieces, total: total) else {
            assemblies[key] = assembly
            return .incomplete
        }
        assemblies[key] = nil
        let transport: TransportHeader
        do {
            transport = try ParsedFrame.parseTransport(bytes, protocolNumber: key.ipProtocol, range: 0..<bytes.count,
                                                       ipv6: isIPv6)
        } catch {
            return .complete(assembly.tag, .datagram(.malformed, content: bytes[...]), malformed: true)
        }
        let classified = FlowClassifier.classify(bytes, transport: transport, source: key.source,
                                                 destination: key.destination, ipProtocol: key.ipProtocol,
                                                 payload: 0..<bytes.count,
                                                 etherType: isIPv6 ? EtherType.ipv6 : EtherType.ipv4)
        return .complete(assembly.tag, classified, malformed: false)
    }

    /// Takes every assembly (at a checkpoint, or when the oldest must go).
    mutating func removeAll() -> [Tag] {
        defer { assemblies.removeAll() }
        return assemblies.values.sorted { $0.started < $1.started }.map(\.tag)
    }

    /// The bytes 0..<total if the pieces cover them (overlaps: first piece wins).
    private static func contiguous(_ pieces: [FragmentPiece], total: Int) -> [UInt8]? {
        var covered = 0
        for piece in pieces.sorted(by: { $0.offset < $1.offset }) {
            guard piece.offset <= covered else { return nil }
            covered = max(covered, piece.offset + piece.data.count)
        }
        guard covered >= total else { return nil }
        var bytes = [UInt8](repeating: 0, count: total)
        var filled = [Bool](repeating: false, count: total)
        for piece in pieces {
            for (index, byte) in zip(piece.offset..., piece.data) where index < total && !filled[index] {
                bytes[index] = byte
                filled[index] = true
            }
        }
        return bytes
    }
}
