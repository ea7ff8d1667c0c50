import Synchronization

/// Exits of one vCPU by kind, counted by its thread and read by status.
public final class ExitStatistics: Sendable {
    public enum Kind: String, CaseIterable, Sendable {
        case io, mmio, interrupted, halt, shutdown
        case systemEvent = "system_event"
        case failedEntry = "failed_entry"
        case internalError = "internal_error"
        case other
        /// Port accesses no device claimed (answered all ones / ignored).
        case unclaimedIO = "unclaimed_io"
        /// MMIO accesses outside RAM and the in-kernel devices.
        case unclaimedMMIO = "unclaimed_mmio"
    }

    private let io = Atomic<UInt64>(0), mmio = Atomic<UInt64>(0), interrupted = Atomic<UInt64>(0)
    private let halt = Atomic<UInt64>(0), shutdown = Atomic<UInt64>(0), systemEvent = Atomic<UInt64>(0)
    private let failedEntry = Atomic<UInt64>(0), internalError = Atomic<UInt64>(0), other = Atomic<UInt64>(0)
    private let unclaimedIO = Atomic<UInt64>(0), unclaimedMMIO = Atomic<UInt64>(0)

    public init() {}

    private func counter<R>(_ kind: Kind, _ body: (borrowing Atomic<UInt64>) -> R) -> R {
        switch kind {
        case .io: return body(io)
        case .mmio: return body(mmio)
        case .interrupted: return body(interrupted)
        case .halt: return body(halt)
        case .shutdown: return body(shutdown)
        case .systemEvent: return body(systemEvent)
        case .failedEntry: return body(failedEntry)
        case .internalError: return body(internalError)
        case .other: return body(other)
        case .unclaimedIO: return body(unclaimedIO)
        case .unclaimedMMIO: return body(unclaimedMMIO)
        }
    }

    func count(_ kind: Kind) {
        counter(kind) { _ = $0.add(1, ordering: .relaxed) }
    }

    public var snapshot: [(Kind, UInt64)] {
        Kind.allCases.map { kind in (kind, counter(kind) { $0.load(ordering: .relaxed) }) }
    }
}
