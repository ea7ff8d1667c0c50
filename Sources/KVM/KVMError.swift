import SystemPackage

/// Why a KVM operation failed. Each case names the ioctl or step, so a log
/// line or an error reply says exactly what the kernel refused.
public enum KVMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// /dev/kvm (or the path given instead) could not be opened.
    case cannotOpen(path: String, errno: Errno)
    /// The fd answers, but not as KVM (for example /dev/null: ENOTTY).
    case notKVM(detail: String)
    /// KVM speaks another API version than the stable one (12).
    case unsupportedAPIVersion(Int32)
    /// A capability this VMM relies on is missing.
    case missingCapability(String)
    /// An ioctl failed.
    case ioctl(KVMIoctl, Errno)
    /// Mapping the vCPU's shared kvm_run page failed.
    case mapRunPage(Errno)
    /// KVM would not read or take back a piece of saved state.
    case stateRefused(String)

    public var description: String {
        switch self {
        case let .cannotOpen(path, errno): return "cannot open \(path): \(errno)"
        case let .notKVM(detail): return "not a KVM device: \(detail)"
        case let .unsupportedAPIVersion(version): return "KVM API version \(version), expected 12"
        case let .missingCapability(name): return "KVM lacks \(name)"
        case let .ioctl(request, errno): return "\(request.name) failed: \(errno)"
        case let .mapRunPage(errno): return "mmap of the vCPU run page failed: \(errno)"
        case let .stateRefused(what): return "KVM refused saved state: \(what)"
        }
    }
}
