/// One transmission-phase request header (28 bytes on the wire).
public struct NBDRequest: Sendable, Equatable {
    public static let size = 28

    public var flags: UInt16
    /// The command number as sent; `command` is nil for one this
    /// implementation does not know.
    public var type: UInt16
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(command: NBDCommand, flags: UInt16 = 0, cookie: UInt64, offset: UInt64 = 0, length: UInt32 = 0) {
        self.init(type: command.rawValue, flags: flags, cookie: cookie, offset: offset, length: length)
    }

    public init(type: UInt16, flags: UInt16, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.type = type
        self.flags = flags
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public var command: NBDCommand? { NBDCommand(rawValue: type) }

    /// Decodes a header; the only thing that makes it undecodable is a
    /// wrong magic or a short buffer, after which the stream cannot be
    /// trusted and the connection ends.
    public static func parse(_ bytes: [UInt8]) throws(NBDProtocolError) -> NBDRequest {
        var reader = BigEndianReader(bytes)
        do {
            let magic = try reader.uint32()
            guard magic == NBDMagic.request else { throw NBDProtocolError.badMagic(UInt64(magic)) }
            let flags = try reader.uint16()
            let type = try reader.uint16()
            return NBDRequest(type: type, flags: flags, cookie: try reader.uint64(),
                              offset: try reader.uint64(), length: try reader.uint32())
        } catch let error as NBDProtocolError {
            throw error
        } catch {
            throw .truncated("request header of \(bytes.count) bytes")
        }
    }

    public func encoded() -> [UInt8] {
        var writer = BigEndianWriter(capacity: Self.size)
        writer.uint32(NBDMagic.request)
        writer.uint16(flags)
        writer.uint16(type)
        writer.uint64(cookie)
        writer.uint64(offset)
        writer.uint32(length)
        return writer.bytes
    }
}

/// What an export allows, as negotiated with one client: the facts a
/// request is checked against.
public struct NBDExportTerms: Sendable, Equatable {
    public var size: UInt64
    public var readOnly: Bool
    public var flush: Bool
    public var trim: Bool
    public var writeZeroes: Bool
    public var structuredReplies: Bool
    public var blockStatus: Bool

    public init(size: UInt64, readOnly: Bool, flush: Bool, trim: Bool, writeZeroes: Bool,
                structuredReplies: Bool, blockStatus: Bool) {
        self.size = size
        self.readOnly = readOnly
        self.flush = flush
        self.trim = trim
        self.writeZeroes = writeZeroes
        self.structuredReplies = structuredReplies
        self.blockStatus = blockStatus
    }
}

/// What the server does with a request header, decided before any of its
/// payload is read.
public enum NBDDisposition: Sendable, Equatable {
    /// Carry it out.
    case serve(NBDCommand)
    /// Answer with this error; `discard` payload bytes follow the header
    /// and are read and dropped first, so the stream stays in step.
    case reject(errno: UInt32, discard: UInt32, reason: String)
    /// Answer with this error, then close: the payload is too large to
    /// read past, so the stream cannot be resynchronised.
    case rejectAndClose(errno: UInt32, reason: String)
    /// NBD_CMD_DISC: no reply, close once earlier requests are answered.
    case disconnect
}

extension NBDRequest {
    /// Checks a request against the export as the specification says:
    /// unknown commands and flags are EINVAL, ranges beyond the export
    /// are ENOSPC for writes and EINVAL otherwise, writes to a read-only
    /// export EPERM, payloads above the maximum block size EINVAL (and a
    /// write's payload that large is not read: the connection closes).
    public func disposition(under terms: NBDExportTerms) -> NBDDisposition {
        let payload: UInt32 = type == NBDCommand.write.rawValue ? length : 0
        func reject(_ errno: UInt32, _ reason: String) -> NBDDisposition {
            .reject(errno: errno, discard: payload, reason: reason)
        }
        guard let command else { return reject(NBDErrno.einval, "unknown command \(type)") }
        if command == .disconnect { return .disconnect }
        if command == .write && length > NBDLimits.maxPayload {
            return .rejectAndClose(errno: NBDErrno.einval,
                                   reason: "write of \(length) bytes exceeds the maximum block size \(NBDLimits.maxPayload)")
        }
        guard flags & ~NBDCommandFlag.known == 0 else { return reject(NBDErrno.einval, "unknown flags \(flags)") }
        if flags & NBDCommandFlag.noHole != 0 && command != .writeZeroes {
            return reject(NBDErrno.einval, "NO_HOLE on a command other than WRITE_ZEROES")
        }
        if flags & NBDCommandFlag.fastZero != 0 && command != .writeZeroes {
            return reject(NBDErrno.einval, "FAST_ZERO on a command other than WRITE_ZEROES")
        }
        if flags & NBDCommandFlag.dontFragment != 0 && !(command == .read && terms.structuredReplies) {
            return reject(NBDErrno.einval, "DF without a structured read")
        }
        if flags & NBDCommandFlag.reqOne != 0 && command != .blockStatus {
            return reject(NBDErrno.einval, "REQ_ONE on a command other than BLOCK_STATUS")
        }
        switch command {
        case .read, .write, .trim, .writeZeroes, .blockStatus:
            break
        case .flush:
            return terms.flush ? .serve(.flush) : reject(NBDErrno.einval, "FLUSH not advertised")
        case .cache:
            return reject(NBDErrno.einval, "CACHE not advertised")
        case .disconnect:
            return .disconnect
        }
        let writes = command == .write || command == .writeZeroes || command == .trim
        if writes && terms.readOnly { return reject(NBDErrno.eperm, "the export is read-only") }
        if command == .trim && !terms.trim { return reject(NBDErrno.einval, "TRIM not advertised") }
        if command == .writeZeroes && !terms.writeZeroes { return reject(NBDErrno.einval, "WRITE_ZEROES not advertised") }
        if command == .blockStatus && !terms.blockStatus {
            return reject(NBDErrno.einval, "BLOCK_STATUS without a negotiated metadata context")
        }
        guard length > 0 else { return reject(NBDErrno.einval, "zero-length request") }
        if command == .read && length > NBDLimits.maxPayload {
            return reject(NBDErrno.einval, "read of \(length) bytes exceeds the maximum block size")
        }
        guard offset <= terms.size, UInt64(length) <= terms.size - offset else {
            let errno = command == .write || command == .writeZeroes ? NBDErrno.enospc : NBDErrno.einval
            return reject(errno, "range \(offset)+\(length) lies beyond the export's \(terms.size) bytes")
        }
        return .serve(command)
    }
}

/// Why an NBD conversation cannot go on.
public enum NBDProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    case badMagic(UInt64)
    case truncated(String)
    /// The peer broke a rule of the handshake.
    case handshake(String)
    /// The server refused an option with this reply type and message.
    case optionRefused(option: UInt32, reply: UInt32, message: String)
    case unexpectedReply(String)
    case closed
    case io(String, errno: Int32)
    case timedOut

    public var description: String {
        switch self {
        case let .badMagic(value): return "bad magic 0x\(String(value, radix: 16))"
        case let .truncated(what): return "truncated \(what)"
        case let .handshake(detail): return "handshake: \(detail)"
        case let .optionRefused(option, reply, message):
            return "option \(option) refused with reply 0x\(String(reply, radix: 16))\(message.isEmpty ? "" : ": \(message)")"
        case let .unexpectedReply(detail): return "unexpected reply: \(detail)"
        case .closed: return "the peer closed the connection"
        case let .io(operation, errno): return "\(operation): errno \(errno)"
        case .timedOut: return "timed out"
        }
    }
}
