import Sandbox

/// blockd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) plus blockd's own, each with the reason it is needed. blockd so
/// far only serves its control socket, which the common rules cover.
let seccompPolicy = SeccompPolicy(daemon: "blockd", rules: [])
