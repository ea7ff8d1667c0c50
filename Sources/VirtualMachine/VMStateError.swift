/// Why pausing, resuming, a dirty-log sync, or saving or loading state
/// failed.
public enum VMStateError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Asked of a VM that has ended, or that cannot run yet.
    case notRunning(String)
    case notPaused
    /// Paused, but devices still have requests in flight.
    case devicesBusy(String)
    /// A saved state that cannot be loaded; the VM was left as it was.
    case badState(String)
    case kvm(String)
    case memory(String)

    public var description: String {
        switch self {
        case let .notRunning(detail): return "VM not running: \(detail)"
        case .notPaused: return "the VM is not paused"
        case let .devicesBusy(detail): return "devices busy: \(detail)"
        case let .badState(detail): return "saved state refused: \(detail)"
        case let .kvm(detail): return "KVM: \(detail)"
        case let .memory(detail): return "guest memory: \(detail)"
        }
    }
}
