/// A strict reader of the Prometheus text exposition format (0.0.4), enough
/// to show that what the endpoint serves is what a Prometheus server parses:
/// every sample belongs to a family declared by a TYPE line, names and
/// labels are well formed, values are numbers.
enum PrometheusText {
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    /// Samples by "name{labels}" exactly as written (or "name").
    static func parse(_ text: String) throws -> [String: Double] {
        var types: [String: String] = [:]
        var samples: [String: Double] = [:]
        guard text.hasSuffix("\n") else { throw Invalid(description: "the exposition must end with a newline") }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            if line.hasPrefix("#") {
                let words = line.split(separator: " ", maxSplits: 3)
                guard words.count >= 3, words[0] == "#" else { continue }
                guard isName(words[2]) else { throw Invalid(description: "bad metric name in '\(line)'") }
                if words[1] == "TYPE" {
                    guard words.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(words[3]) else {
                        throw Invalid(description: "bad TYPE line '\(line)'")
                    }
                    guard types[String(words[2])] == nil else { throw Invalid(description: "TYPE repeated: '\(line)'") }
                    types[String(words[2])] = String(words[3])
                }
                continue
            }
            guard !line.isEmpty else { continue }
            guard let space = line.lastIndex(of: " ") else { throw Invalid(description: "no value in '\(line)'") }
            let series = line[..<space]
            let valueText = line[line.index(after: space)...]
            guard let value = Double(valueText) ?? ["+Inf": .infinity, "-Inf": -.infinity, "NaN": .nan][String(valueText)] else {
                throw Invalid(description: "bad value in '\(line)'")
            }
            let name = series.prefix { $0 != "{" }
            guard isName(name) else { throw Invalid(description: "bad sample name in '\(line)'") }
            if series.count > name.count {
                try checkLabels(series.dropFirst(name.count), line: String(line))
            }
            let family = ["_bucket", "_count", "_sum"].first { name.hasSuffix($0) && types[String(name.dropLast($0.count))] == "histogram" }
                .map { String(name.dropLast($0.count)) } ?? String(name)
            guard types[family] != nil else { throw Invalid(description: "sample before its TYPE: '\(line)'") }
            guard samples[String(series)] == nil else { throw Invalid(description: "duplicate series '\(series)'") }
            samples[String(series)] = value
        }
        return samples
    }

    private static func isName(_ name: Substring) -> Bool {
        guard let first = name.first, first.isLetter || first == "_" || first == ":" else { return false }
        return name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") }
    }

    /// {name="value",...} with \\, \" and \n escapes.
    private static func checkLabels(_ text: Substring, line: String) throws {
        guard text.first == "{", text.last == "}" else { throw Invalid(description: "bad labels in '\(line)'") }
        var rest = text.dropFirst().dropLast()
        while !rest.isEmpty {
            guard let equals = rest.firstIndex(of: "="), isName(rest[..<equals]),
                  rest[rest.index(after: equals)...].first == "\"" else {
                throw Invalid(description: "bad label in '\(line)'")
            }
            var index = rest.index(equals, offsetBy: 2)
            var closed = false
            while index < rest.endIndex {
                if rest[index] == "\\" {
                    index = rest.index(after: index)
                    guard index < rest.endIndex, ["\\", "\"", "n"].contains(rest[index]) else {
                        throw Invalid(description: "bad escape in '\(line)'")
                    }
                } else if rest[index] == "\"" {
                    closed = true
                    break
                }
                index = rest.index(after: index)
            }
            guard closed else { throw Invalid(description: "unterminated label value in '\(line)'") }
            rest = rest[rest.index(after: index)...]
            if rest.first == "," { rest = rest.dropFirst() } else if !rest.isEmpty {
                throw Invalid(description: "expected ',' between labels in '\(line)'")
            }
        }
    }
}
