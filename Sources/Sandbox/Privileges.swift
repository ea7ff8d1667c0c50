internal import CSupport
import Glibc

/// Giving up what a daemon no longer needs once it is set up.
public enum Privileges {
    /// Empties every capability set. A daemon started as root (by hand, or
    /// by a unit that grants a capability for set-up) keeps only what its
    /// already-open fds give it.
    public static func dropAllCapabilities() throws(SandboxError) {
        guard colo_drop_all_capabilities() == 0 else { throw .privileges("capset", errno) }
    }

    /// no_new_privs: execve can never grant privileges again (setuid
    /// binaries, file capabilities). Required for an unprivileged seccomp
    /// filter.
    public static func setNoNewPrivileges() throws(SandboxError) {
        guard colo_set_no_new_privs() == 0 else { throw .privileges("prctl(PR_SET_NO_NEW_PRIVS)", errno) }
    }

    public static var noNewPrivileges: Bool { colo_get_no_new_privs() == 1 }

    /// The effective capability set as a bitmask (0 when none).
    public static var effectiveCapabilities: UInt64 {
        var mask: UInt64 = 0
        return colo_effective_capabilities(&mask) == 0 ? mask : UInt64.max
    }
}
