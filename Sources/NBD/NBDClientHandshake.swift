/// The client's side of the fixed newstyle handshake.
struct NBDClientHandshake {
    let socket: NBDSocket

    struct Outcome {
        var size: UInt64
        var flags: UInt16
        var structuredReplies: Bool
    }

    /// Reads the greeting and answers with our flags; returns whether the
    /// server will omit the 124 zero bytes after NBD_OPT_EXPORT_NAME.
    func greet() throws(NBDProtocolError) -> Bool {
        var reader = BigEndianReader(try socket.read(18))
        let magic = (try? reader.uint64()) ?? 0
        guard magic == NBDMagic.greeting else { throw .badMagic(magic) }
        let optionMagic = (try? reader.uint64()) ?? 0
        guard optionMagic == NBDMagic.option else {
            throw .handshake("the server does not speak newstyle negotiation")
        }
        let serverFlags = (try? reader.uint16()) ?? 0
        guard serverFlags & NBDHandshakeFlag.fixedNewstyle != 0 else {
            throw .handshake("the server does not speak fixed newstyle negotiation")
        }
        let noZeroes = serverFlags & NBDHandshakeFlag.noZeroes != 0
        var flags = BigEndianWriter()
        flags.uint32(NBDHandshakeFlag.clientFixedNewstyle | (noZeroes ? NBDHandshakeFlag.clientNoZeroes : 0))
        try socket.send(flags.bytes)
        return noZeroes
    }

    func open(export name: String, structured wantStructured: Bool) throws(NBDProtocolError) -> Outcome {
        let noZeroes = try greet()
        var structured = false
        if wantStructured {
            try send(.structuredReply, [])
            let reply = try readReply(for: .structuredReply)
            structured = reply.type == NBDOptionReply.ack
        }
        try send(.go, NBDInfoRequest(exportName: name, requests: [NBDInfo.blockSize]).encoded())
        var size: UInt64?
        var flags: UInt16 = 0
        while true {
            let reply = try readReply(for: .go)
            switch reply.type {
            case NBDOptionReply.info:
                var reader = BigEndianReader(reply.data)
                if (try? reader.uint16()) == NBDInfo.export {
                    guard let exportSize = try? reader.uint64(), let exportFlags = try? reader.uint16() else {
                        throw .truncated("NBD_INFO_EXPORT")
                    }
                    size = exportSize
                    flags = exportFlags
                }
            case NBDOptionReply.ack:
                guard let size else { throw .handshake("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT") }
                return Outcome(size: size, flags: flags, structuredReplies: structured)
            case NBDOptionReply.errUnsupported:
                return try exportName(name, noZeroes: noZeroes)
            default:
                throw .optionRefused(option: NBDOption.go.rawValue, reply: reply.type,
                                     message: String(decoding: reply.data, as: UTF8.self))
            }
        }
    }

    /// The names the server lists; ends the session with NBD_OPT_ABORT.
    func list() throws(NBDProtocolError) -> [String] {
        _ = try greet()
        try send(.list, [])
        var names: [String] = []
        while true {
            let reply = try readReply(for: .list)
            if reply.type == NBDOptionReply.ack { break }
            guard reply.type == NBDOptionReply.server else {
                throw .optionRefused(option: NBDOption.list.rawValue, reply: reply.type,
                                     message: String(decoding: reply.data, as: UTF8.self))
            }
            var reader = BigEndianReader(reply.data)
            guard let length = try? reader.uint32(), let name = try? reader.bytes(Int(length)) else {
                throw .truncated("NBD_REP_SERVER")
            }
            names.append(String(decoding: name, as: UTF8.self))
        }
        try? send(.abort, [])
        return names
    }

    /// The oldest way in, for servers without NBD_OPT_GO.
    private func exportName(_ name: String, noZeroes: Bool) throws(NBDProtocolError) -> Outcome {
        try send(.exportName, Array(name.utf8))
        var reader = BigEndianReader(try socket.read(10))
        guard let size = try? reader.uint64(), let flags = try? reader.uint16() else { throw .truncated("export reply") }
        if !noZeroes { _ = try socket.read(124) }
        return Outcome(size: size, flags: flags, structuredReplies: false)
    }

    private func send(_ option: NBDOption, _ payload: [UInt8]) throws(NBDProtocolError) {
        try socket.send(NBDOptionHeader.encode(option: option.rawValue, payload: payload))
    }

    private func readReply(for option: NBDOption) throws(NBDProtocolError) -> (type: UInt32, data: [UInt8]) {
        var reader = BigEndianReader(try socket.read(20))
        guard let magic = try? reader.uint64(), let replyOption = try? reader.uint32(),
              let type = try? reader.uint32(), let length = try? reader.uint32() else {
            throw .truncated("option reply")
        }
        guard magic == NBDMagic.optionReply else { throw .badMagic(magic) }
        guard replyOption == option.rawValue else {
            throw .unexpectedReply("reply for option \(replyOption) while waiting for \(option.rawValue)")
        }
        guard length <= NBDLimits.maxOptionLength else { throw .unexpectedReply("option reply of \(length) bytes") }
        return (type, try socket.read(Int(length)))
    }
}
