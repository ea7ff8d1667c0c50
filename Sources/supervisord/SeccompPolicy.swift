import Sandbox

/// supervisord's seccomp allowlist: the common rules (Sandbox's CommonRules)
/// plus its own. It reaches the other daemons through their AF_UNIX control
/// sockets, which the common socket/connect rules already admit.
let seccompPolicy = SeccompPolicy(daemon: "supervisord", rules: [])
