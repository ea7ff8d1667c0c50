@testable import Sandbox
import XCTest

/// The filter itself is proven inside running daemons (Tests/system): this
/// process is the test runner and must stay unfiltered.
final class SeccompPolicyTests: XCTestCase {
    func testEveryRuleNamesAKnownSyscallAndGivesAReason() throws {
        let policy = SeccompPolicy(daemon: "test", rules: [])
        XCTAssertNoThrow(try policy.compile().release())
        for rule in policy.rules {
            XCTAssertFalse(rule.reason.isEmpty, rule.name)
        }
    }

    func testAMisspelledSyscallIsAnErrorNotASilentGap() {
        let policy = SeccompPolicy(daemon: "test", rules: [SyscallRule("reed", "typo")])
        XCTAssertThrowsError(try policy.compile()) { error in
            guard case SandboxError.unknownSyscall("reed") = error else { return XCTFail("\(error)") }
        }
    }

    func testCommonRulesAdmitNoFileOpeningOrExecution() {
        let names = SeccompPolicy(daemon: "test", rules: []).allowedSyscallNames
        for forbidden in ["open", "openat", "openat2", "execve", "execveat", "ptrace", "mount", "kill"] {
            XCTAssertFalse(names.contains(forbidden), forbidden)
        }
        XCTAssertFalse(SeccompPolicy(daemon: "test", rules: []).allowsEverySocketFamily)
    }
}
