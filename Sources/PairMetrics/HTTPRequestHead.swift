/// The part of an HTTP/1.x request a metrics endpoint needs: method and path
/// of the request line, found within a bounded head. A pure function of the
/// bytes received so far, so every malformed input is a test case (and a
/// fuzz input), never a crash.
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The target without its query string.
    public var path: String

    /// Longest request head accepted: a scrape's head is a few hundred bytes.
    public static let maxBytes = 8192

    public enum ParseOutcome: Sendable, Equatable {
        /// The head is not complete yet: read more.
        case incomplete
        case request(HTTPRequestHead)
        case rejected(HTTPStatus, reason: String)
    }

    /// Parses the bytes of a request received so far.
    public static func parse(_ bytes: [UInt8]) -> ParseOutcome {
        guard let end = headEnd(bytes) else {
            return bytes.count >= maxBytes
                ? .rejected(.headerTooLarge, reason: "request head longer than \(maxBytes) bytes")
                : .incomplete
        }
        guard end <= maxBytes else {
            return .rejected(.headerTooLarge, reason: "request head longer than \(maxBytes) bytes")
        }
        let lineEnd = bytes.firstIndex(of: UInt8(ascii: "\n")) ?? end
        var line = bytes[..<lineEnd]
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            return .rejected(.badRequest, reason: "request line has control or non-ASCII bytes")
        }
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty }) else {
            return .rejected(.badRequest, reason: "request line is not 'METHOD target HTTP/1.x'")
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard method.utf8.allSatisfy(isTokenByte) else {
            return .rejected(.badRequest, reason: "bad method")
        }
        guard version.hasPrefix("HTTP/") else {
            return .rejected(.badRequest, reason: "not an HTTP request")
        }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            return .rejected(.versionNotSupported, reason: "only HTTP/1.0 and HTTP/1.1 are served")
        }
        guard target.hasPrefix("/") else {
            return .rejected(.badRequest, reason: "the target must be a path starting with '/'")
        }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        return .request(HTTPRequestHead(method: method, path: path))
    }

    /// Index just past the blank line that ends the head (CRLF CRLF, or bare
    /// LF LF as lenient servers accept).
    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") {
                let next = index + 1
                if next < bytes.count && bytes[next] == UInt8(ascii: "\n") { return next + 1 }
                if next + 1 < bytes.count && bytes[next] == UInt8(ascii: "\r") && bytes[next + 1] == UInt8(ascii: "\n") {
                    return next + 2
                }
            }
            index += 1
        }
        return nil
    }

    /// RFC 9110 token characters.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

/// The statuses the metrics endpoint answers with.
public enum HTTPStatus: Int, Sendable, Equatable {
    case ok = 200
    case badRequest = 400
    case notFound = 404
    case methodNotAllowed = 405
    case requestTimeout = 408
    case headerTooLarge = 431
    case serviceUnavailable = 503
    case versionNotSupported = 505

    public var reasonPhrase: String {
        switch self {
        case .ok: return "OK"
        case .badRequest: return "Bad Request"
        case .notFound: return "Not Found"
        case .methodNotAllowed: return "Method Not Allowed"
        case .requestTimeout: return "Request Timeout"
        case .headerTooLarge: return "Request Header Fields Too Large"
        case .serviceUnavailable: return "Service Unavailable"
        case .versionNotSupported: return "HTTP Version Not Supported"
        }
    }
}
