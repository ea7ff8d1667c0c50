import KVM
import Sandbox

/// vmmd's seccomp allowlist: the rules common to every daemon (Sandbox's
/// CommonRules) plus vmmd's own, each with the reason it is needed.
///
/// KVM is reached only through the fds opened before the filter (the
/// /dev/kvm fd, and the VM and vCPU fds KVM hands out): each KVM ioctl this
/// VMM issues is admitted by its request number, one rule each, and no
/// other ioctl at all. Nothing here opens a file or makes a network socket.
let seccompPolicy = SeccompPolicy(daemon: "vmmd", rules: KVMIoctl.allCases.map { request in
    SyscallRule("ioctl", request.name, when: [.argument(1, equals: UInt64(request.number))])
} + [
    SyscallRule("socketpair", "console attach hands the client one end of a new AF_UNIX pair",
                when: [.argument(0, equals: 1 /* AF_UNIX */)]),
])
