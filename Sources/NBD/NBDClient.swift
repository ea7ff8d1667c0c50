import BlockDevice
import ControlSocket
import Dispatch
import Glibc
import Synchronization

/// A request sent and not yet answered; `NBDClient.wait` collects it.
public final class NBDPendingRequest: @unchecked Sendable {
    fileprivate let done = DispatchSemaphore(value: 0)
    fileprivate let request: NBDRequest
    /// Where a READ's data lands; valid while the caller waits.
    fileprivate let destination: UnsafeMutableRawBufferPointer?
    fileprivate var error: BlockError?
    fileprivate var extents: [BlockExtent] = []

    fileprivate init(request: NBDRequest, destination: UnsafeMutableRawBufferPointer?) {
        self.request = request
        self.destination = destination
    }
}

/// An NBD client of one export, usable as a `BlockDevice`: the primary's
/// link to the secondary, the resync mirror's target, a benchmark's driver.
///
/// Any number of threads may have requests in flight at once: each
/// request gets a cookie, a reader thread of the client's own matches
/// replies (simple or structured, in any order) to their waiters and
/// reads READ data straight into the waiter's buffer. A request not
/// answered within `requestTimeout` kills the connection (every waiter
/// gets `.disconnected`): a peer that stopped answering must not hang the
/// guest's writes.
public final class NBDClient: BlockDevice, @unchecked Sendable {
    public let exportName: String
    public let capacity: UInt64
    public let transmissionFlags: UInt16
    public let structuredReplies: Bool
    public let requestTimeout: Duration

    private let socket: NBDSocket
    private struct State {
        var nextCookie: UInt64 = 1
        var pending: [UInt64: NBDPendingRequest] = [:]
        var failure: String?
    }
    private let state = Mutex(State())
    /// Signalled when the reader thread is gone; no buffer of a waiter is
    /// written after that.
    private let readerFinished = DispatchSemaphore(value: 0)
    /// The request whose reply the reader is taking in (reader thread only):
    /// failed with the connection if its reply is cut short.
    private var receiving: NBDPendingRequest?

    /// Negotiates `export` on a connected stream socket this client now owns.
    public static func connect(fd: Int32, export: String, structuredReplies: Bool = true,
                               requestTimeout: Duration = .seconds(30)) throws(NBDProtocolError) -> NBDClient {
        let socket = NBDSocket(adopting: fd)
        let outcome: NBDClientHandshake.Outcome
        do {
            outcome = try NBDClientHandshake(socket: socket).open(export: export, structured: structuredReplies)
        } catch {
            socket.close()
            throw error
        }
        return NBDClient(socket: socket, export: export, outcome: outcome, requestTimeout: requestTimeout)
    }

    /// The export names a server lists (NBD_OPT_LIST); closes `fd`.
    public static func listExports(fd: Int32) throws(NBDProtocolError) -> [String] {
        let socket = NBDSocket(adopting: fd)
        defer { socket.close() }
        return try NBDClientHandshake(socket: socket).list()
    }

    private init(socket: NBDSocket, export: String, outcome: NBDClientHandshake.Outcome, requestTimeout: Duration) {
        self.socket = socket
        self.exportName = export
        self.capacity = outcome.size
        self.transmissionFlags = outcome.flags
        self.structuredReplies = outcome.structuredReplies
        self.requestTimeout = requestTimeout
        spawnThread(name: "nbd-client") { [self] in readReplies() }
    }

    deinit {
        socket.close()
    }

    public var features: BlockFeatures {
        let flags = transmissionFlags
        return BlockFeatures(readOnly: flags & NBDTransmissionFlag.readOnly != 0,
                             flush: flags & NBDTransmissionFlag.sendFlush != 0,
                             fua: flags & NBDTransmissionFlag.sendFUA != 0,
                             trim: flags & NBDTransmissionFlag.sendTrim != 0,
                             writeZeroes: flags & NBDTransmissionFlag.sendWriteZeroes != 0)
    }

    /// Why the connection is over, or nil while it serves.
    public var failure: String? { state.withLock { $0.failure } }

    // MARK: Requests

    /// Sends a request without waiting for its reply. `payload` is a
    /// WRITE's data (sent before this returns); `destination` receives a
    /// READ's data and must stay valid until `wait` returns.
    public func submit(_ command: NBDCommand, offset: UInt64 = 0, length: UInt32 = 0, flags: UInt16 = 0,
                       payload: UnsafeRawBufferPointer? = nil,
                       destination: UnsafeMutableRawBufferPointer? = nil) throws(BlockError) -> NBDPendingRequest {
        let registered: Result<NBDPendingRequest, BlockError> = state.withLock { state in
            if let failure = state.failure { return .failure(.disconnected(failure)) }
            let cookie = state.nextCookie
            state.nextCookie += 1
            let pending = NBDPendingRequest(
                request: NBDRequest(command: command, flags: flags, cookie: cookie, offset: offset, length: length),
                destination: destination)
            state.pending[cookie] = pending
            return .success(pending)
        }
        let pending = try registered.get()
        do {
            try socket.send(pending.request.encoded(), payload: payload)
        } catch {
            fail("send: \(error)")
        }
        return pending
    }

    /// Waits for a submitted request's reply.
    public func wait(_ pending: NBDPendingRequest) throws(BlockError) {
        if pending.done.wait(timeout: .now() + .nanoseconds(Int(clamping: requestTimeout.nanoseconds))) == .timedOut {
            fail("no reply within \(requestTimeout)")
            pending.done.wait()
            // The reader may have been filling this request's buffer.
            readerFinished.wait()
            readerFinished.signal()
        }
        if let error = pending.error { throw error }
    }

    /// Ends the session politely (NBD_CMD_DISC) and closes.
    public func disconnect() {
        if state.withLock({ $0.failure == nil }) {
            try? socket.send(NBDRequest(command: .disconnect, cookie: 0).encoded())
        }
        fail("disconnected by this side")
    }

    // MARK: BlockDevice

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let chunk = min(buffer.count - done, Int(NBDLimits.maxPayload))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + chunk)])
            try wait(try submit(.read, offset: offset + UInt64(done), length: UInt32(chunk), destination: slice))
            done += chunk
        }
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        var done = 0
        while done < data.count {
            let chunk = min(data.count - done, Int(NBDLimits.maxPayload))
            let slice = UnsafeRawBufferPointer(rebasing: data[done..<(done + chunk)])
            try wait(try submit(.write, offset: offset + UInt64(done), length: UInt32(chunk),
                                flags: fua ? NBDCommandFlag.fua : 0, payload: slice))
            done += chunk
        }
    }

    public func flush() throws(BlockError) {
        try wait(try submit(.flush))
    }

    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try ranged(.trim, offset: offset, length: length, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        try ranged(.writeZeroes, offset: offset, length: length, fua: fua)
    }

    private func ranged(_ command: NBDCommand, offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {
        var done: UInt64 = 0
        let step = UInt64(1 << 30)
        while done < length {
            let chunk = min(length - done, step)
            try wait(try submit(command, offset: offset + done, length: UInt32(chunk), flags: fua ? NBDCommandFlag.fua : 0))
            done += chunk
        }
    }

    // MARK: Replies

    private func readReplies() {
        do throws(NBDProtocolError) {
            while true {
                let magic = try socket.read(4)
                var reader = BigEndianReader(magic)
                let value = (try? reader.uint32()) ?? 0
                switch value {
                case NBDMagic.simpleReply: try readSimpleReply()
                case NBDMagic.structuredReply: try readStructuredChunk()
                default: throw NBDProtocolError.badMagic(UInt64(value))
                }
            }
        } catch {
            fail("\(error)")
            if let receiving {
                receiving.error = .disconnected("\(error)")
                receiving.done.signal()
            }
        }
        readerFinished.signal()
    }

    private func take(_ cookie: UInt64, finished: Bool) throws(NBDProtocolError) -> NBDPendingRequest {
        let pending = state.withLock { state in
            finished ? state.pending.removeValue(forKey: cookie) : state.pending[cookie]
        }
        guard let pending else { throw .unexpectedReply("reply to unknown cookie \(cookie)") }
        return pending
    }

    private func readSimpleReply() throws(NBDProtocolError) {
        var reader = BigEndianReader(try socket.read(12))
        guard let error = try? reader.uint32(), let cookie = try? reader.uint64() else { throw .truncated("reply") }
        let pending = try take(cookie, finished: true)
        receiving = pending
        if error != 0 {
            pending.error = .remote(errno: error, "\(pending.request.command.map { "\($0)" } ?? "request") failed")
        } else if pending.request.command == .read, let destination = pending.destination {
            try socket.read(into: destination)
        }
        receiving = nil
        pending.done.signal()
    }

    private func readStructuredChunk() throws(NBDProtocolError) {
        var reader = BigEndianReader(try socket.read(16))
        guard let flags = try? reader.uint16(), let type = try? reader.uint16(), let cookie = try? reader.uint64(),
              let length = try? reader.uint32() else { throw .truncated("structured reply") }
        let finished = flags & NBDReplyType.flagDone != 0
        let pending = try take(cookie, finished: finished)
        if finished { receiving = pending }
        let request = pending.request
        switch type {
        case NBDReplyType.offsetData, NBDReplyType.offsetHole:
            guard length >= (type == NBDReplyType.offsetData ? 8 : 12) else { throw .truncated("data chunk") }
            var header = BigEndianReader(try socket.read(type == NBDReplyType.offsetData ? 8 : 12))
            let offset = (try? header.uint64()) ?? 0
            let count = type == NBDReplyType.offsetData ? UInt64(length - 8) : UInt64((try? header.uint32()) ?? 0)
            guard let destination = pending.destination, offset >= request.offset,
                  offset - request.offset + count <= UInt64(destination.count) else {
                throw .unexpectedReply("data chunk outside the request")
            }
            let slice = UnsafeMutableRawBufferPointer(
                rebasing: destination[Int(offset - request.offset)..<Int(offset - request.offset + count)])
            if type == NBDReplyType.offsetData {
                try socket.read(into: slice)
            } else {
                slice.initializeMemory(as: UInt8.self, repeating: 0)
            }
        case NBDReplyType.error, NBDReplyType.errorOffset:
            let payload = try socket.read(Int(min(length, NBDLimits.maxOptionLength)))
            try socket.discard(UInt64(length) - UInt64(payload.count))
            var body = BigEndianReader(payload)
            let errno = (try? body.uint32()) ?? NBDErrno.eio
            let messageLength = (try? body.uint16()) ?? 0
            let message = (try? body.bytes(Int(messageLength))).map { String(decoding: $0, as: UTF8.self) } ?? ""
            pending.error = .remote(errno: errno, message)
        case NBDReplyType.blockStatus:
            var body = BigEndianReader(try socket.read(Int(min(length, NBDLimits.maxOptionLength))))
            _ = try? body.uint32()
            var offset = request.offset
            while let extentLength = try? body.uint32(), let extentFlags = try? body.uint32() {
                pending.extents.append(BlockExtent(offset: offset, length: UInt64(extentLength),
                                                   hasData: extentFlags & 1 == 0))
                offset += UInt64(extentLength)
            }
        case NBDReplyType.none:
            guard length == 0 else { throw .unexpectedReply("NONE chunk with \(length) bytes") }
        default:
            throw .unexpectedReply("structured reply type \(type)")
        }
        if finished {
            receiving = nil
            pending.done.signal()
        }
    }

    private func fail(_ reason: String) {
        let waiting: [NBDPendingRequest] = state.withLock { state in
            if state.failure == nil { state.failure = reason }
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        socket.shutdown()
        for pending in waiting {
            pending.error = .disconnected(reason)
            pending.done.signal()
        }
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds.multipliedReportingOverflow(by: 1_000_000_000).overflow
            ? Int64.max : seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
