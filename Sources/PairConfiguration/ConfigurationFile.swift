/// The syntax of a host's configuration file: `[section]` headers and
/// `key = value` lines, `#` comments, nothing else.
///
///     # /etc/colo/demo.conf
///     [pair]
///     role = primary
///     peer = 10.77.0.2:7600
///
/// Deliberately small: every line is either understood or an error naming
/// the file and line, so an operator's typo never becomes a silent default.
/// Values are raw strings here; `HostConfiguration` gives them meaning.
public struct ConfigurationFile: Sendable {
    /// One `key = value` line.
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var value: String
        public var line: Int
    }

    /// A `[name]` section and its entries in file order.
    public struct Section: Sendable {
        public var name: String
        public var line: Int
        public var entries: [Entry]
    }

    public let path: String
    public let sections: [Section]

    /// Longest accepted file: a host configuration is a page, not a database.
    public static let maxBytes = 64 * 1024

    public init(text: String, path: String) throws(ConfigurationError) {
        self.path = path
        guard text.utf8.count <= Self.maxBytes else {
            throw ConfigurationError(path: path, line: 0, "file is larger than \(Self.maxBytes) bytes")
        }
        var sections: [Section] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            let line = rawLine.trimmingWhitespace
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), line.count > 2 else {
                    throw ConfigurationError(path: path, line: lineNumber, "a section header is written [name]")
                }
                let name = String(line.dropFirst().dropLast()).trimmingWhitespace
                guard name.allSatisfy(\.isNameCharacter), !name.isEmpty else {
                    throw ConfigurationError(path: path, line: lineNumber, "bad section name '\(name)'")
                }
                if let earlier = sections.first(where: { $0.name == name }) {
                    throw ConfigurationError(path: path, line: lineNumber,
                                             "section [\(name)] already started on line \(earlier.line)")
                }
                sections.append(Section(name: name, line: lineNumber, entries: []))
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigurationError(path: path, line: lineNumber, "expected 'key = value' or '[section]'")
            }
            let key = String(line[..<equals]).trimmingWhitespace
            let value = String(line[line.index(after: equals)...]).trimmingWhitespace
            guard !key.isEmpty, key.allSatisfy(\.isNameCharacter) else {
                throw ConfigurationError(path: path, line: lineNumber, "bad key '\(key)'")
            }
            guard !sections.isEmpty else {
                throw ConfigurationError(path: path, line: lineNumber, "'\(key)' comes before any [section]")
            }
            if let earlier = sections[sections.count - 1].entries.first(where: { $0.key == key }) {
                throw ConfigurationError(path: path, line: lineNumber,
                                         "'\(key)' is already set on line \(earlier.line)")
            }
            sections[sections.count - 1].entries.append(Entry(key: key, value: value, line: lineNumber))
        }
        self.sections = sections
    }
}

/// A configuration problem, located so the operator can go straight to it.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    /// 1-based; 0 when the problem is the file as a whole.
    public var line: Int
    public var message: String

    public init(path: String, line: Int, _ message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    public var description: String {
        line > 0 ? "\(path):\(line): \(message)" : "\(path): \(message)"
    }
}

extension Character {
    /// Letters, digits, '-' and '_': what section names and keys are made of.
    var isNameCharacter: Bool {
        isASCII && (isLetter || isNumber || self == "-" || self == "_")
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        return String(drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }
}
