import Durations
import BlockDevice
import ControlSocket
import Dispatch
import Glibc
import Synchronization

/// A request sent and not yet answered; `NBDClient.wait` collects it.
public final class NBDPendingRequest: @unchecked Sendable {
    /// Signalled when the reply has landed or the caller should take over
    /// reading the socket.
    fileprivate let wakeup = DispatchSemaphore(value: 0)
    fileprivate let request: NBDRequest
    /// Where a READ's data lands; valid while the caller waits.
    fileprivate let destination: UnsafeMutableRawBufferPointer?
    // Guarded by the client's state lock.
    fileprivate var completed = false
    fileprivate var sleeping = false
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
/// request gets a cookie and replies (simple or structured, in any order)
/// are matched to their requests, READ data going straight into the
/// requester's buffer. There is no reader thread: one of the waiting
/// callers reads the socket for all of them (the leader) and, once its own
/// reply is in, passes the reading on to another waiting caller. A lone
/// caller (the primary replicating one guest write) therefore reads its
/// own reply, with no thread hand-off on the way.
///
/// A request not answered within `requestTimeout` kills the connection
/// (every waiter gets `.disconnected`): a peer that stopped answering must
/// not hang the guest's writes.
public final class NBDClient: BlockDevice, @unchecked Sendable {
    public let exportName: String
    public let capacity: UInt64
    public let transmissionFlags: UInt16
    public let structuredReplies: Bool
    public let requestTimeout: Duration

    private let socket: NBDSocket
    private struct State {
        var nextCookie: UInt64 = 1
        /// Sent and not completed.
        var pending: [UInt64: NBDPendingRequest] = [:]
        /// Waiting callers asleep on their semaphores.
        var sleepers: [ObjectIdentifier: NBDPendingRequest] = [:]
        var leaderReading = false
        var failure: String?
    }
    private let state = Mutex(State())

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
        // A leader blocked in recv gives up after the request timeout.
        socket.setReceiveTimeout(requestTimeout)
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

    private enum Turn {
        case done
        case sleep(until: DispatchTime)
        case lead
    }

    /// Waits for a submitted request's reply, reading the socket for every
    /// waiter while no one else does.
    public func wait(_ pending: NBDPendingRequest) throws(BlockError) {
        let deadline = DispatchTime.now() + .nanoseconds(Int(clamping: requestTimeout.nanoseconds))
        while true {
            let turn: Turn = state.withLock { state in
                pending.sleeping = false
                state.sleepers.removeValue(forKey: ObjectIdentifier(pending))
                if pending.completed {
                    // After a failure the leader may still be inside this
                    // request's buffer: wait until it has let go.
                    guard state.failure != nil && state.leaderReading else { return .done }
                    pending.sleeping = true
                    state.sleepers[ObjectIdentifier(pending)] = pending
                    return .sleep(until: .distantFuture)
                }
                if state.leaderReading {
                    pending.sleeping = true
                    state.sleepers[ObjectIdentifier(pending)] = pending
                    return .sleep(until: deadline)
                }
                state.leaderReading = true
                return .lead
            }
            switch turn {
            case .done:
                if let error = pending.error { throw error }
                return
            case .sleep(let until):
                if pending.wakeup.wait(timeout: until) == .timedOut {
                    fail("no reply within \(requestTimeout)")
                }
            case .lead:
                lead(until: pending, deadline: deadline)
            }
        }
    }

    /// Reads replies for everyone until `mine` is completed, then hands
    /// the reading to a waiting caller (every one, once the connection
    /// has failed).
    private func lead(until mine: NBDPendingRequest, deadline: DispatchTime) {
        while !state.withLock({ _ in mine.completed }) {
            guard DispatchTime.now() < deadline else {
                fail("no reply within \(requestTimeout)")
                break
            }
            do throws(NBDProtocolError) {
                try readReply()
            } catch {
                fail("\(error)")
                break
            }
        }
        let woken: [NBDPendingRequest] = state.withLock { state in
            state.leaderReading = false
            if state.failure != nil { return Array(state.sleepers.values) }
            return state.sleepers.values.first { !$0.completed }.map { [$0] } ?? []
        }
        woken.forEach { $0.wakeup.signal() }
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

    // MARK: Replies (the leader only)

    private func readReply() throws(NBDProtocolError) {
        let magic = try socket.read(4)
        var reader = BigEndianReader(magic)
        let value = (try? reader.uint32()) ?? 0
        switch value {
        case NBDMagic.simpleReply: try readSimpleReply()
        case NBDMagic.structuredReply: try readStructuredChunk()
        default: throw NBDProtocolError.badMagic(UInt64(value))
        }
    }

    private func lookUp(_ cookie: UInt64) throws(NBDProtocolError) -> NBDPendingRequest {
        guard let pending = state.withLock({ $0.pending[cookie] }) else {
            throw .unexpectedReply("reply to unknown cookie \(cookie)")
        }
        return pending
    }

    /// The request's reply is complete: its caller may return.
    private func complete(_ pending: NBDPendingRequest, error: BlockError? = nil) {
        let sleeping = state.withLock { state -> Bool in
            guard state.pending.removeValue(forKey: pending.request.cookie) != nil else { return false }
            if let error { pending.error = error }
            pending.completed = true
            return pending.sleeping
        }
        if sleeping { pending.wakeup.signal() }
    }

    private func readSimpleReply() throws(NBDProtocolError) {
        var reader = BigEndianReader(try socket.read(12))
        guard let error = try? reader.uint32(), let cookie = try? reader.uint64() else { throw .truncated("reply") }
        let pending = try lookUp(cookie)
        if error != 0 {
            return complete(pending, error: .remote(errno: error, "\(pending.request.command.map { "\($0)" } ?? "request") failed"))
        }
        if pending.request.command == .read, let destination = pending.destination {
            try socket.read(into: destination)
        }
        complete(pending)
    }

    private func readStructuredChunk() throws(NBDProtocolError) {
        var reader = BigEndianReader(try socket.read(16))
        guard let flags = try? reader.uint16(), let type = try? reader.uint16(), let cookie = try? reader.uint64(),
              let length = try? reader.uint32() else { throw .truncated("structured reply") }
        let pending = try lookUp(cookie)
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
            state.withLock { _ in pending.error = .remote(errno: errno, message) }
        case NBDReplyType.blockStatus:
            var body = BigEndianReader(try socket.read(Int(min(length, NBDLimits.maxOptionLength))))
            _ = try? body.uint32()
            var offset = request.offset
            var extents: [BlockExtent] = []
            while let extentLength = try? body.uint32(), let extentFlags = try? body.uint32() {
                extents.append(BlockExtent(offset: offset, length: UInt64(extentLength), hasData: extentFlags & 1 == 0))
                offset += UInt64(extentLength)
            }
            state.withLock { _ in pending.extents += extents }
        case NBDReplyType.none:
            guard length == 0 else { throw .unexpectedReply("NONE chunk with \(length) bytes") }
        default:
            throw .unexpectedReply("structured reply type \(type)")
        }
        if flags & NBDReplyType.flagDone != 0 { complete(pending) }
    }

    /// Ends the connection: every request not completed fails with `reason`.
    private func fail(_ reason: String) {
        let waiting: [NBDPendingRequest] = state.withLock { state in
            if state.failure == nil { state.failure = reason }
            let failed = Array(state.pending.values)
            for pending in failed {
                pending.error = .disconnected(reason)
                pending.completed = true
            }
            state.pending.removeAll()
            return failed.filter(\.sleeping)
        }
        socket.shutdown()
        waiting.forEach { $0.wakeup.signal() }
    }
}

