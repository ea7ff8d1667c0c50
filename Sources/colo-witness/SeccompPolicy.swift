import Sandbox

/// colo-witness's seccomp allowlist: the common rules plus rewriting its
/// state file. It accepts on a listening socket opened before the filter.
let seccompPolicy = SeccompPolicy(daemon: "colo-witness", rules: [
    SyscallRule("openat", "the state file and its directory (for fsync)"),
    SyscallRule("fsync", "a grant is durable before it is announced"),
    SyscallRule("rename", "the state file is replaced atomically"),
])
