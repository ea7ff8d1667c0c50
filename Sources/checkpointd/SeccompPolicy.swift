import Sandbox

/// checkpointd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) plus checkpointd's own, each with the reason it is needed. checkpointd so
/// far only serves its control socket, which the common rules cover.
let seccompPolicy = SeccompPolicy(daemon: "checkpointd", rules: [])
