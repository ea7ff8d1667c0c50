import Sandbox

/// supervisord's seccomp allowlist: the common rules (Sandbox's CommonRules)
/// plus its own. It reaches the other daemons through their AF_UNIX control
/// sockets, which the common rules admit; its listening port is bound before
/// the filter. It never parses guest data, but it dials the peer and the
/// witness, reads the guest kernel at each boot and keeps the pair's state.
let seccompPolicy = SeccompPolicy(daemon: "supervisord", rules: [
    SyscallRule("socket", "dial the peer supervisord, its data channels and the witness over IPv4",
                when: [.argument(0, equals: 2 /* AF_INET */)]),
    SyscallRule("socket", "dial the peer supervisord, its data channels and the witness over IPv6",
                when: [.argument(0, equals: 10 /* AF_INET6 */)]),
    SyscallRule("getpeername", "log which peer connected"),
    SyscallRule("socketpair", "the frame and block socketpairs between vmmd and proxyd/blockd, proxyd's event socket",
                when: [.argument(0, equals: 1 /* AF_UNIX */)]),
    SyscallRule("openat", "the guest kernel at each boot, the pair state file (systemd confines the file system)"),
    SyscallRule("pread64", "the kernel's format is read from its header"),
    SyscallRule("fsync", "the pair state file and its directory are made durable before a transition acts"),
    SyscallRule("fdatasync", "durable state writes through newer glibc"),
    SyscallRule("rename", "the pair state file is replaced atomically"),
    SyscallRule("renameat", "rename through newer glibc"),
    SyscallRule("renameat2", "rename through newer glibc"),
    SyscallRule("unlink", "stale overlays of a new secondary are removed"),
    SyscallRule("unlinkat", "unlink through newer glibc"),
    SyscallRule("access", "a failover commit journal in progress is looked for"),
    SyscallRule("faccessat", "access through newer glibc"),
    SyscallRule("faccessat2", "access through newer glibc"),
])
