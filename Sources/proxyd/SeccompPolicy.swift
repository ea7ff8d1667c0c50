import Sandbox

/// proxyd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) and the batched datagram calls. proxyd parses what guests
/// and the network send, so it gets the tightest filter: it only reads,
/// writes, polls and sends on fds it was handed (tap, frame sockets, the
/// peer link, the event socket, a capture file) and never opens, connects
/// or accepts anything. Authentication of the peer link needs randomness
/// (getrandom, common).
let seccompPolicy = SeccompPolicy(daemon: "proxyd", rules: [
    SyscallRule("recvmmsg", "a batch of frames from a frame socket in one call"),
    SyscallRule("sendmmsg", "a batch of frames to a frame socket in one call"),
])
