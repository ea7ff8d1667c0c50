/// The header of one option the client sends during the handshake.
public struct NBDOptionHeader: Sendable, Equatable {
    public static let size = 16
    public var option: UInt32
    public var length: UInt32

    public static func parse(_ bytes: [UInt8]) throws(NBDProtocolError) -> NBDOptionHeader {
        var reader = BigEndianReader(bytes)
        guard let magic = try? reader.uint64(), let option = try? reader.uint32(),
              let length = try? reader.uint32() else {
            throw .truncated("option header of \(bytes.count) bytes")
        }
        guard magic == NBDMagic.option else { throw .badMagic(magic) }
        return NBDOptionHeader(option: option, length: length)
    }

    public static func encode(option: UInt32, payload: [UInt8]) -> [UInt8] {
        var writer = BigEndianWriter(capacity: size + payload.count)
        writer.uint64(NBDMagic.option)
        writer.uint32(option)
        writer.uint32(UInt32(payload.count))
        writer.bytes(payload)
        return writer.bytes
    }
}

/// A malformed option payload: answered with NBD_REP_ERR_INVALID, and the
/// handshake goes on.
public struct NBDInvalidOption: Error, Sendable, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

/// NBD_OPT_INFO and NBD_OPT_GO: an export name and the NBD_INFO items
/// wanted.
public struct NBDInfoRequest: Sendable, Equatable {
    public var exportName: String
    public var requests: [UInt16]

    public init(exportName: String, requests: [UInt16]) {
        self.exportName = exportName
        self.requests = requests
    }

    public static func parse(_ payload: [UInt8]) throws(NBDInvalidOption) -> NBDInfoRequest {
        var reader = BigEndianReader(payload)
        guard let nameLength = try? reader.uint32() else { throw NBDInvalidOption("INFO/GO payload too short") }
        guard nameLength <= UInt32(NBDLimits.maxNameLength), Int(nameLength) <= reader.remaining - 2,
              let name = try? reader.bytes(Int(nameLength)) else {
            throw NBDInvalidOption("export name length \(nameLength) does not fit the payload")
        }
        guard let count = try? reader.uint16(), reader.remaining == Int(count) * 2 else {
            throw NBDInvalidOption("information request count does not match the payload")
        }
        var requests: [UInt16] = []
        for _ in 0..<count {
            guard let item = try? reader.uint16() else { throw NBDInvalidOption("information request list cut short") }
            requests.append(item)
        }
        return NBDInfoRequest(exportName: try wireString(name), requests: requests)
    }

    public func encoded() -> [UInt8] {
        var writer = BigEndianWriter()
        let name = Array(exportName.utf8)
        writer.uint32(UInt32(name.count))
        writer.bytes(name)
        writer.uint16(UInt16(requests.count))
        requests.forEach { writer.uint16($0) }
        return writer.bytes
    }
}

/// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: an export name
/// and the context queries.
public struct NBDMetaContextRequest: Sendable, Equatable {
    public var exportName: String
    public var queries: [String]

    public init(exportName: String, queries: [String]) {
        self.exportName = exportName
        self.queries = queries
    }

    public static func parse(_ payload: [UInt8]) throws(NBDInvalidOption) -> NBDMetaContextRequest {
        var reader = BigEndianReader(payload)
        guard let nameLength = try? reader.uint32(), nameLength <= UInt32(NBDLimits.maxNameLength),
              let name = try? reader.bytes(Int(nameLength)) else {
            throw NBDInvalidOption("export name does not fit the payload")
        }
        guard let count = try? reader.uint32(), UInt64(count) * 4 <= UInt64(reader.remaining) else {
            throw NBDInvalidOption("query count does not fit the payload")
        }
        var queries: [String] = []
        for _ in 0..<count {
            guard let length = try? reader.uint32(), length <= UInt32(NBDLimits.maxNameLength),
                  let query = try? reader.bytes(Int(length)) else {
                throw NBDInvalidOption("a query does not fit the payload")
            }
            queries.append(try wireString(query))
        }
        guard reader.remaining == 0 else { throw NBDInvalidOption("trailing bytes after the queries") }
        return NBDMetaContextRequest(exportName: try wireString(name), queries: queries)
    }

    public func encoded() -> [UInt8] {
        var writer = BigEndianWriter()
        let name = Array(exportName.utf8)
        writer.uint32(UInt32(name.count))
        writer.bytes(name)
        writer.uint32(UInt32(queries.count))
        for query in queries {
            writer.uint32(UInt32(query.utf8.count))
            writer.string(query)
        }
        return writer.bytes
    }
}

/// A string on the wire: UTF-8 without NUL, at most 4096 bytes.
func wireString(_ bytes: [UInt8]) throws(NBDInvalidOption) -> String {
    guard bytes.count <= NBDLimits.maxNameLength, !bytes.contains(0) else {
        throw NBDInvalidOption("a string is longer than \(NBDLimits.maxNameLength) bytes or holds NUL")
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        throw NBDInvalidOption("a string is not valid UTF-8")
    }
    return text
}
