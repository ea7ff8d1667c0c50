import Sandbox

/// proxyd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) plus proxyd's own, each with the reason it is needed. proxyd so
/// far only serves its control socket, which the common rules cover.
let seccompPolicy = SeccompPolicy(daemon: "proxyd", rules: [])
