internal import CSeccomp
import Glibc

/// One allowed syscall, optionally only with certain argument values, and
/// why the daemon needs it. The reason is part of the data: a rule nobody can
/// justify is a rule to delete.
public struct SyscallRule: Sendable {
    public var name: String
    public var reason: String
    /// All must hold for the call to be allowed (empty: any arguments).
    public var conditions: [ArgumentCondition]

    public init(_ name: String, _ reason: String, when conditions: [ArgumentCondition] = []) {
        self.name = name
        self.reason = reason
        self.conditions = conditions
    }
}

/// A test on one syscall argument.
public struct ArgumentCondition: Sendable {
    public enum Test: Sendable {
        case equals(UInt64)
        /// `(argument & mask) == value`
        case maskedEquals(mask: UInt64, value: UInt64)
    }

    public var argumentIndex: UInt32
    public var test: Test

    public static func argument(_ index: UInt32, equals value: UInt64) -> ArgumentCondition {
        ArgumentCondition(argumentIndex: index, test: .equals(value))
    }

    public static func argument(_ index: UInt32, masked mask: UInt64, equals value: UInt64) -> ArgumentCondition {
        ArgumentCondition(argumentIndex: index, test: .maskedEquals(mask: mask, value: value))
    }
}

/// A daemon's seccomp allowlist: the common rules every daemon of this
/// project needs plus the daemon's own, kept as data beside its `main`.
///
/// Any syscall not listed fails with EPERM instead of killing the process: a
/// refused call on a rare path then surfaces as an error the daemon reports,
/// rather than a dead daemon taking the protected VM's replica with it. The
/// attacker gains nothing either way: the call does not happen.
public struct SeccompPolicy: Sendable {
    public var daemon: String
    public var rules: [SyscallRule]

    public init(daemon: String, rules: [SyscallRule], includingCommon: Bool = true) {
        self.daemon = daemon
        self.rules = (includingCommon ? CommonRules.all : []) + rules
    }

    /// Names of the syscalls this policy admits (with or without conditions).
    public var allowedSyscallNames: Set<String> {
        Set(rules.map(\.name))
    }

    /// The errno a refused syscall returns.
    public static let refusalErrno: Int32 = EPERM

    /// Compiles the policy and loads it for every thread of the process
    /// (TSYNC), after setting no_new_privs. Irreversible.
    public func install() throws(SandboxError) {
        let filter = try compile()
        defer { filter.release() }
        try Privileges.setNoNewPrivileges()
        let status = seccomp_load(filter.context)
        guard status == 0 else { throw .seccomp("seccomp_load", status) }
    }

    /// A compiled filter not yet loaded.
    struct CompiledFilter {
        let context: scmp_filter_ctx
        func release() { seccomp_release(context) }
    }

    /// Builds the libseccomp filter; fails on a rule libseccomp cannot
    /// express, such as an unknown syscall name.
    func compile() throws(SandboxError) -> CompiledFilter {
        // SCMP_ACT_ERRNO(x) and SCMP_ACT_ALLOW are macros.
        let refuse = UInt32(0x0005_0000) | UInt32(Self.refusalErrno)
        let allow = UInt32(0x7fff_0000)
        guard let context = seccomp_init(refuse) else { throw .seccomp("seccomp_init", -ENOMEM) }
        let filter = CompiledFilter(context: context)
        do throws(SandboxError) {
            var status = seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, 1)
            guard status == 0 else { throw .seccomp("seccomp_attr_set(TSYNC)", status) }
            for rule in rules {
                let number = seccomp_syscall_resolve_name(rule.name)
                guard number != __NR_SCMP_ERROR else { throw .unknownSyscall(rule.name) }
                var comparisons = rule.conditions.map { condition -> scmp_arg_cmp in
                    switch condition.test {
                    case .equals(let value):
                        return scmp_arg_cmp(arg: condition.argumentIndex, op: SCMP_CMP_EQ, datum_a: value, datum_b: 0)
                    case .maskedEquals(let mask, let value):
                        return scmp_arg_cmp(arg: condition.argumentIndex, op: SCMP_CMP_MASKED_EQ,
                                            datum_a: mask, datum_b: value)
                    }
                }
                status = seccomp_rule_add_array(context, allow, number, UInt32(comparisons.count), &comparisons)
                guard status == 0 else { throw .seccomp("seccomp_rule_add(\(rule.name))", status) }
            }
        } catch {
            filter.release()
            throw error
        }
        return filter
    }
}

/// A sandboxing step that failed; the daemon must not serve without it.
public enum SandboxError: Error, Sendable, CustomStringConvertible {
    case seccomp(String, Int32)
    case unknownSyscall(String)
    case privileges(String, Int32)

    public var description: String {
        switch self {
        case let .seccomp(call, status): return "\(call) failed: \(String(cString: strerror(-status)))"
        case let .unknownSyscall(name): return "seccomp policy names an unknown syscall: \(name)"
        case let .privileges(call, error): return "\(call) failed: \(String(cString: strerror(error)))"
        }
    }
}
