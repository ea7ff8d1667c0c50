import Sandbox

/// checkpointd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) and nothing else. checkpointd opens no file and creates no
/// network socket: guest RAM, bitmaps and device state arrive as memfds, the
/// TCP channels to the peer as connected sockets, all over the control
/// socket. What it does with them (mmap MAP_SHARED, sendmsg/recvmsg,
/// setsockopt TCP_NODELAY/TCP_QUICKACK/SO_*TIMEO, getsockopt SO_TYPE, shutdown,
/// memfd_create for the colo-cache and device state, madvise
/// MADV_POPULATE_WRITE to fault the colo-cache in at pairing, pthread_create/join)
/// is all in the common rules.
let seccompPolicy = SeccompPolicy(daemon: "checkpointd", rules: [])
