import Sandbox

/// blockd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) plus blockd's own, each with the reason it is needed.
/// Listening sockets are bound before the filter; links and listeners
/// arrive as fds, so no socket family beyond AF_UNIX can be created.
let seccompPolicy = SeccompPolicy(daemon: "blockd", rules: [
    SyscallRule("openat", "disk images, overlays and the failover journal named in BlockdOpenDisk requests (systemd confines the file system to the StateDirectory)"),
    SyscallRule("fallocate", "trim and write-zeroes punch holes in images and overlays"),
    SyscallRule("fdatasync", "flush and FUA make writes durable"),
    SyscallRule("fsync", "the failover journal and its directory"),
    SyscallRule("msync", "an overlay's allocation bitmap is synced on flush"),
    SyscallRule("rename", "the failover journal is replaced atomically"),
    SyscallRule("renameat", "rename through newer glibc"),
    SyscallRule("renameat2", "rename through newer glibc"),
    SyscallRule("unlink", "the failover journal is removed when the commit is done"),
    SyscallRule("unlinkat", "unlink through newer glibc"),
])
