import Sandbox

/// vmmd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) plus vmmd's own, each with the reason it is needed. vmmd so
/// far only serves its control socket, which the common rules cover.
let seccompPolicy = SeccompPolicy(daemon: "vmmd", rules: [])
