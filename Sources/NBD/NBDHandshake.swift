/// The server's side of the fixed newstyle handshake, up to the chosen
/// export. Malformed options are answered with the errors the
/// specification names and the haggling goes on; what cannot be answered
/// (bad magic, unknown client flags, an option too large to read, an
/// unknown name in NBD_OPT_EXPORT_NAME) ends the connection.
struct NBDServerHandshake {
    let socket: NBDSocket
    let catalog: NBDExportCatalog

    /// What the client and server agreed on.
    struct Outcome {
        var export: NBDExport
        var structuredReplies: Bool
        var blockStatus: Bool
    }

    /// Nil when the client aborted.
    func run() throws(NBDProtocolError) -> Outcome? {
        var greeting = BigEndianWriter()
        greeting.uint64(NBDMagic.greeting)
        greeting.uint64(NBDMagic.option)
        greeting.uint16(NBDHandshakeFlag.fixedNewstyle | NBDHandshakeFlag.noZeroes)
        try socket.send(greeting.bytes)

        var reader = BigEndianReader(try socket.read(4))
        let clientFlags = (try? reader.uint32()) ?? 0
        let known = NBDHandshakeFlag.clientFixedNewstyle | NBDHandshakeFlag.clientNoZeroes
        guard clientFlags & ~known == 0 else { throw .handshake("unknown client flags 0x\(String(clientFlags, radix: 16))") }
        let noZeroes = clientFlags & NBDHandshakeFlag.clientNoZeroes != 0

        var structured = false
        var metaContextSelected = false
        for _ in 0..<NBDLimits.maxOptions {
            let header = try NBDOptionHeader.parse(try socket.read(NBDOptionHeader.size))
            guard header.length <= NBDLimits.maxOptionLength else {
                throw .handshake("option \(header.option) with \(header.length) bytes of data")
            }
            let payload = try socket.read(Int(header.length))
            switch NBDOption(rawValue: header.option) {
            case .exportName:
                guard let name = try? wireString(payload), let export = catalog.export(named: name) else {
                    throw .handshake("NBD_OPT_EXPORT_NAME names no export")
                }
                var reply = BigEndianWriter()
                reply.uint64(export.device.capacity)
                reply.uint16(export.transmissionFlags)
                if !noZeroes { reply.bytes([UInt8](repeating: 0, count: 124)) }
                try socket.send(reply.bytes)
                return Outcome(export: export, structuredReplies: false, blockStatus: false)
            case .abort:
                try? reply(header.option, NBDOptionReply.ack)
                return nil
            case .list:
                guard payload.isEmpty else {
                    try reply(header.option, NBDOptionReply.errInvalid, message: "NBD_OPT_LIST takes no data")
                    continue
                }
                for export in catalog.all {
                    var data = BigEndianWriter()
                    data.uint32(UInt32(export.name.utf8.count))
                    data.string(export.name)
                    data.string(export.description)
                    try reply(header.option, NBDOptionReply.server, data: data.bytes)
                }
                try reply(header.option, NBDOptionReply.ack)
            case .info, .go:
                let request: NBDInfoRequest
                do {
                    request = try NBDInfoRequest.parse(payload)
                } catch {
                    try reply(header.option, NBDOptionReply.errInvalid, message: error.reason)
                    continue
                }
                guard let export = catalog.export(named: request.exportName) else {
                    try reply(header.option, NBDOptionReply.errUnknown, message: "no export named '\(request.exportName)'")
                    continue
                }
                try sendInfo(for: export, option: header.option, requests: request.requests, structured: structured)
                try reply(header.option, NBDOptionReply.ack)
                if header.option == NBDOption.go.rawValue {
                    return Outcome(export: export, structuredReplies: structured, blockStatus: metaContextSelected)
                }
            case .structuredReply:
                if !payload.isEmpty || structured {
                    try reply(header.option, NBDOptionReply.errInvalid,
                              message: structured ? "structured replies already negotiated" : "the option takes no data")
                } else {
                    structured = true
                    try reply(header.option, NBDOptionReply.ack)
                }
            case .listMetaContext, .setMetaContext:
                let selecting = header.option == NBDOption.setMetaContext.rawValue
                guard structured else {
                    try reply(header.option, NBDOptionReply.errInvalid, message: "negotiate structured replies first")
                    continue
                }
                let request: NBDMetaContextRequest
                do {
                    request = try NBDMetaContextRequest.parse(payload)
                } catch {
                    try reply(header.option, NBDOptionReply.errInvalid, message: error.reason)
                    continue
                }
                guard catalog.export(named: request.exportName) != nil else {
                    try reply(header.option, NBDOptionReply.errUnknown, message: "no export named '\(request.exportName)'")
                    continue
                }
                let base = NBDLimits.metaContextBaseAllocation
                let matches = request.queries.isEmpty ? !selecting
                    : request.queries.contains { $0 == base || (!selecting && $0 == "base:") }
                if selecting { metaContextSelected = matches }
                if matches {
                    var data = BigEndianWriter()
                    data.uint32(selecting ? NBDServerConnection.baseAllocationContextID : 0)
                    data.string(base)
                    try reply(header.option, NBDOptionReply.metaContext, data: data.bytes)
                }
                try reply(header.option, NBDOptionReply.ack)
            case .startTLS:
                try reply(header.option, NBDOptionReply.errUnsupported, message: "TLS is not offered: links are authenticated before NBD starts")
            case nil:
                try reply(header.option, NBDOptionReply.errUnsupported, message: "unknown option \(header.option)")
            }
        }
        throw .handshake("more than \(NBDLimits.maxOptions) options")
    }

    private func sendInfo(for export: NBDExport, option: UInt32, requests: [UInt16], structured: Bool)
        throws(NBDProtocolError) {
        var info = BigEndianWriter()
        info.uint16(NBDInfo.export)
        info.uint64(export.device.capacity)
        info.uint16(export.transmissionFlags)
        try reply(option, NBDOptionReply.info, data: info.bytes)
        for item in Set(requests).sorted() {
            var data = BigEndianWriter()
            data.uint16(item)
            switch item {
            case NBDInfo.name:
                data.string(export.name)
            case NBDInfo.description:
                data.string(export.description)
            case NBDInfo.blockSize:
                data.uint32(1)
                data.uint32(4096)
                data.uint32(NBDLimits.maxPayload)
            default:
                continue
            }
            try reply(option, NBDOptionReply.info, data: data.bytes)
        }
    }

    private func reply(_ option: UInt32, _ type: UInt32, data: [UInt8] = [], message: String = "")
        throws(NBDProtocolError) {
        let body = data + Array(message.utf8)
        var writer = BigEndianWriter(capacity: 20 + body.count)
        writer.uint64(NBDMagic.optionReply)
        writer.uint32(option)
        writer.uint32(type)
        writer.uint32(UInt32(body.count))
        writer.bytes(body)
        try socket.send(writer.bytes)
    }
}
