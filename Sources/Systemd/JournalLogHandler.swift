internal import CSystemd
import Glibc
import Logging

/// A swift-log handler that writes structured journald entries, or readable
/// lines on stderr when no journal listens.
///
/// Every entry carries `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER` and
/// `COLO_DAEMON`; each metadata key becomes a field `COLO_<KEY>` (upper-cased,
/// other characters as `_`), so `event: "checkpoint_done"` is `COLO_EVENT`.
/// Operators then filter with `journalctl COLO_EVENT=failover` instead of
/// parsing text.
///
/// libsystemd's send call reports success even when nothing listens on the
/// journal socket, so the choice is made by looking for that socket.
public struct JournalLogHandler: LogHandler {
    public enum Destination: Sendable {
        case journal
        case stderr
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let daemon: String
    private let destination: Destination

    public init(daemon: String, level: Logger.Level, destination: Destination = JournalLogHandler.detectDestination()) {
        self.daemon = daemon
        self.logLevel = level
        self.destination = destination
    }

    /// Where the journal socket lives when journald runs.
    public static let journalSocketPath = "/run/systemd/journal/socket"

    /// `.journal` when journald's socket exists, `.stderr` otherwise.
    public static func detectDestination() -> Destination {
        var status = stat()
        guard stat(journalSocketPath, &status) == 0, (status.st_mode & S_IFMT) == S_IFSOCK else { return .stderr }
        return .journal
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        switch destination {
        case .journal:
            sendToJournal(level: event.level, message: "\(event.message)", fields: fields,
                          file: event.file, line: event.line, function: event.function)
        case .stderr:
            writeToStderr(level: event.level, message: "\(event.message)", fields: fields)
        }
    }

    private func sendToJournal(level: Logger.Level, message: String, fields: Logger.Metadata,
                               file: String, line: UInt, function: String) {
        var entries = [
            "MESSAGE=\(message)",
            "PRIORITY=\(level.syslogPriority)",
            "SYSLOG_IDENTIFIER=\(daemon)",
            "COLO_DAEMON=\(daemon)",
            "CODE_FILE=\(file)",
            "CODE_LINE=\(line)",
            "CODE_FUNC=\(function)",
        ]
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            entries.append("COLO_\(Self.journalFieldName(key))=\(value)")
        }
        // Each iovec points into one contiguous copy of the entries.
        let buffers = entries.map { Array($0.utf8) }
        var storage = buffers.flatMap { $0 }
        storage.withUnsafeMutableBytes { raw in
            var vectors: [iovec] = []
            var offset = 0
            for buffer in buffers {
                vectors.append(iovec(iov_base: raw.baseAddress! + offset, iov_len: buffer.count))
                offset += buffer.count
            }
            _ = sd_journal_sendv(&vectors, Int32(vectors.count))
        }
    }

    private func writeToStderr(level: Logger.Level, message: String, fields: Logger.Metadata) {
        var line = "\(Self.timestamp()) \(daemon)[\(getpid())] \(level): \(message)"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(value)"
        }
        line += "\n"
        // One write(2) per line keeps lines from different threads whole.
        var bytes = Array(line.utf8)
        _ = write(STDERR_FILENO, &bytes, bytes.count)
    }

    /// A journald field name: upper-case letters, digits and underscores.
    static func journalFieldName(_ key: String) -> String {
        String(key.uppercased().unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "A"..."Z", "0"..."9": return Character(scalar)
            default: return "_"
            }
        })
    }

    /// UTC, millisecond precision, ISO 8601.
    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + "\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}

extension Logger.Level {
    /// syslog(3) priority, as journald's PRIORITY field wants it.
    var syslogPriority: Int {
        switch self {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }
}
