/// Who holds each pair, at which epoch: the witness's whole memory.
///
/// Grants are monotonic: a claim for a newer epoch wins, the holder of the
/// current epoch may repeat its claim (a retry after a lost answer), and
/// everything else is refused. Two hosts claiming the same new epoch (a cut
/// link, both sides alive) are served in arrival order: the first gets the
/// pair, the second is told who has it and fences itself.
public struct WitnessRegistry: Sendable, Equatable {
    public struct Holding: Sendable, Equatable {
        public var host: String
        public var epoch: UInt64
    }

    public private(set) var holdings: [String: Holding]

    public init(holdings: [String: Holding] = [:]) {
        self.holdings = holdings
    }

    public enum Decision: Sendable, Equatable {
        case granted
        case refused(holder: Holding, reason: String)
    }

    public mutating func claim(pair: String, host: String, epoch: UInt64) -> Decision {
        guard let current = holdings[pair] else {
            holdings[pair] = Holding(host: host, epoch: epoch)
            return .granted
        }
        if epoch > current.epoch {
            holdings[pair] = Holding(host: host, epoch: epoch)
            return .granted
        }
        if epoch == current.epoch && host == current.host {
            return .granted
        }
        let reason = epoch == current.epoch
            ? "epoch \(epoch) of \(pair) was already granted to \(current.host)"
            : "epoch \(epoch) is older than \(pair)'s epoch \(current.epoch), held by \(current.host)"
        return .refused(holder: current, reason: reason)
    }

    /// One line per pair: `pair epoch host`, the form of the state file.
    public var serialized: String {
        holdings.keys.sorted().map { "\($0) \(holdings[$0]!.epoch) \(holdings[$0]!.host)\n" }.joined()
    }

    /// Reads the state file's form; a malformed line is an error, not a gap
    /// (a witness that forgot a grant could grant an epoch twice).
    public init(serialized: String) throws(WitnessError) {
        var holdings: [String: Holding] = [:]
        for (index, line) in serialized.split(separator: "\n").enumerated() {
            let fields = line.split(separator: " ")
            guard fields.count == 3, let epoch = UInt64(fields[1]) else {
                throw .badState("line \(index + 1): expected 'pair epoch host'")
            }
            holdings[String(fields[0])] = Holding(host: String(fields[2]), epoch: epoch)
        }
        self.holdings = holdings
    }
}

public enum WitnessError: Error, Sendable, Equatable, CustomStringConvertible {
    case badState(String)
    case io(String)
    case protocolViolation(String)

    public var description: String {
        switch self {
        case let .badState(detail): return "witness state file: \(detail)"
        case let .io(detail): return "witness: \(detail)"
        case let .protocolViolation(detail): return "witness protocol: \(detail)"
        }
    }
}
