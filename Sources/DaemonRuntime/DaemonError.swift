import ControlSocket
import Sandbox
import Systemd

/// Why a daemon could not start. Each case reads as a complete sentence on
/// stderr and in the journal, and the daemon exits non-zero.
public enum DaemonError: Error, Sendable, CustomStringConvertible {
    case configuration(String)
    case socket(ControlSocketError)
    case systemd(SystemdError)
    case sandbox(SandboxError)
    case startup(String)

    public var description: String {
        switch self {
        case let .configuration(message): return "configuration: \(message)"
        case let .socket(error): return "control socket: \(error)"
        case let .systemd(error): return "systemd: \(error)"
        case let .sandbox(error): return "sandbox: \(error)"
        case let .startup(message): return message
        }
    }
}
