internal import CSeccomp
internal import CSupport
import Glibc

/// Tries operations a sandboxed daemon must not be able to do, so an operator
/// (and the tests) can see the filter refuse them in the running daemon.
/// Every probe is harmless when, wrongly, it succeeds: it opens and closes.
public enum SandboxProbe {
    public struct Outcome: Sendable {
        public var syscall: String
        public var refused: Bool
        /// errno of the failed call, 0 when it succeeded.
        public var errno: Int32
    }

    /// Runs each probe whose syscall `policy` does not allow (an allowed
    /// syscall proves nothing about the filter).
    public static func run(against policy: SeccompPolicy) -> [Outcome] {
        let allowed = policy.allowedSyscallNames
        var outcomes: [Outcome] = []
        if !allowed.contains("openat") {
            outcomes.append(attempt("openat") { open("/proc/self/status", O_RDONLY | O_CLOEXEC) })
        }
        if !policy.allowsEverySocketFamily {
            // A netlink socket (which could reconfigure the host's network)
            // needs no privilege, so only the filter can refuse it; no
            // daemon's rules admit that family.
            outcomes.append(attempt("socket") {
                socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0 /* NETLINK_ROUTE */)
            })
        }
        if !allowed.contains("execve") {
            // A null path: even an unfiltered execve fails (EFAULT) instead of
            // replacing the daemon.
            outcomes.append(attempt("execve") { Int32(colo_syscall3(number("execve"), 0, 0, 0)) })
        }
        if !allowed.contains("ptrace") {
            // PTRACE_PEEKDATA of pid 0 cannot succeed either way.
            outcomes.append(attempt("ptrace") { Int32(colo_syscall3(number("ptrace"), 2, 0, 0)) })
        }
        return outcomes
    }

    /// The native syscall number, from libseccomp's table.
    private static func number(_ name: String) -> Int {
        Int(seccomp_syscall_resolve_name(name))
    }

    private static func attempt(_ name: String, _ call: () -> Int32) -> Outcome {
        let result = call()
        if result >= 0 {
            close(result)
            return Outcome(syscall: name, refused: false, errno: 0)
        }
        let error = errno
        return Outcome(syscall: name, refused: error == SeccompPolicy.refusalErrno, errno: error)
    }
}

extension SeccompPolicy {
    /// True when a rule admits socket() whatever the family.
    var allowsEverySocketFamily: Bool {
        rules.contains { $0.name == "socket" && $0.conditions.isEmpty }
    }
}
