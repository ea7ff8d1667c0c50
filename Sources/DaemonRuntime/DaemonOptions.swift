import ArgumentParser
import Glibc
import Logging

/// The command-line options every daemon shares (docs/ARCHITECTURE.md, "The
/// daemon contract").
public struct DaemonOptions: ParsableArguments, Sendable {
    @Option(name: .long, help: ArgumentHelp(
        "Directory of this host's control sockets.",
        discussion: "Default: $COLO_RUNTIME_DIR, else $RUNTIME_DIRECTORY (systemd), else /run/colo.",
        valueName: "dir"))
    public var runtimeDir: String?

    @Option(name: .long, help: ArgumentHelp(
        "A user (name or uid) allowed on the control socket besides the daemon's own uid. Repeatable; also $COLO_ALLOWED_USERS (comma-separated).",
        valueName: "user"))
    public var allowUser: [String] = []

    @Flag(name: .long, help: "Do not drop capabilities or install the seccomp filter (debugging only).")
    public var noSandbox = false

    @Option(name: .long, help: "Lowest level logged: trace, debug, info, notice, warning, error, critical.")
    public var logLevel: Logger.Level = .info

    public init() {}

    /// The runtime directory after applying the documented defaults.
    public var resolvedRuntimeDirectory: String {
        let environment = ProcessInfoLite.environment
        return runtimeDir ?? environment["COLO_RUNTIME_DIR"]
            ?? environment["RUNTIME_DIRECTORY"].map { $0.split(separator: ":").first.map(String.init) ?? $0 }
            ?? "/run/colo"
    }

    /// Every user named by flag or environment, resolved to uids now: a name
    /// that does not resolve is a configuration error, not a silent denial.
    public func resolvedAllowedUIDs() throws(DaemonError) -> Set<UInt32> {
        var names = allowUser
        if let fromEnvironment = ProcessInfoLite.environment["COLO_ALLOWED_USERS"] {
            names += fromEnvironment.split(separator: ",").map { String($0).trimmingSpaces }
        }
        var uids: Set<UInt32> = [geteuid()]
        for name in names where !name.isEmpty {
            if let uid = UInt32(name) {
                uids.insert(uid)
            } else if let entry = getpwnam(name) {
                uids.insert(entry.pointee.pw_uid)
            } else {
                throw .configuration("--allow-user \(name): no such user")
            }
        }
        return uids
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Environment access without Foundation.
enum ProcessInfoLite {
    static var environment: [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}

extension String {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
