import BlockDevice
import Glibc
import Logging

/// One client of the NBD server: the handshake and the reading of
/// requests on a thread of its own. A request with more queued behind it
/// goes to a few workers of the connection (`NBDRequestWorkers`), so a
/// client keeps several in flight and gets each reply when it is done; a
/// lone request (the replicated guest write) is served by the reader
/// itself, without a thread hand-off.
final class NBDServerConnection: @unchecked Sendable {
    static let baseAllocationContextID: UInt32 = 1

    let socket: NBDSocket
    let catalog: NBDExportCatalog
    let logger: Logger
    let counters: NBDServerCounters
    /// Workers of one connection (two cores here: more only add hand-offs),
    /// and how many requests it holds read at most.
    static let workers = 2
    static let requestsInFlight = 8

    init(socket: NBDSocket, catalog: NBDExportCatalog, logger: Logger, counters: NBDServerCounters) {
        self.socket = socket
        self.catalog = catalog
        self.logger = logger
        self.counters = counters
    }

    func run(peer: String) {
        defer { socket.close() }
        do throws(NBDProtocolError) {
            guard let outcome = try NBDServerHandshake(socket: socket, catalog: catalog).run() else {
                logger.debug("NBD client aborted the handshake", metadata: ["event": "nbd_client_aborted", "peer": "\(peer)"])
                return
            }
            logger.info("NBD client connected", metadata: [
                "event": "nbd_client_connected", "peer": "\(peer)", "export": "\(outcome.export.name)",
                "structured_replies": "\(outcome.structuredReplies)",
            ])
            try transmit(outcome)
            logger.info("NBD client disconnected", metadata: ["event": "nbd_client_disconnected", "peer": "\(peer)"])
        } catch .closed {
            logger.info("NBD client went away", metadata: ["event": "nbd_client_gone", "peer": "\(peer)"])
        } catch {
            counters.protocolErrors.add(1, ordering: .relaxed)
            logger.warning("NBD client dropped: \(error)", metadata: [
                "event": "nbd_client_dropped", "peer": "\(peer)", "reason": "\(error)",
            ])
        }
    }

    private func transmit(_ outcome: NBDServerHandshake.Outcome) throws(NBDProtocolError) {
        let export = outcome.export
        let device = export.device
        let features = device.features
        let terms = NBDExportTerms(size: device.capacity, readOnly: export.readOnly || features.readOnly,
                                   flush: features.flush, trim: features.trim, writeZeroes: features.writeZeroes,
                                   structuredReplies: outcome.structuredReplies, blockStatus: outcome.blockStatus)
        let structured = outcome.structuredReplies
        let workers = NBDRequestWorkers(count: Self.workers, inFlight: Self.requestsInFlight,
                                        name: "nbd-work") { [self] job in
            defer { job.payload?.deallocate() }
            do throws(NBDProtocolError) {
                try serve(job.command, job.request, payload: job.payload, device: device, structured: structured)
            } catch {
                // The reply could not be sent: the reader sees the socket end.
                socket.shutdown()
            }
        }
        defer { workers.finish() }
        while true {
            let request = try NBDRequest.parse(try socket.read(NBDRequest.size))
            switch request.disposition(under: terms) {
            case .disconnect:
                return
            case let .reject(errno, discard, reason):
                try socket.discard(UInt64(discard))
                counters.rejected.add(1, ordering: .relaxed)
                logger.debug("NBD request rejected: \(reason)", metadata: ["event": "nbd_request_rejected", "errno": "\(errno)"])
                try replyError(request, errno: errno, message: reason, structured: outcome.structuredReplies)
            case let .rejectAndClose(errno, reason):
                counters.rejected.add(1, ordering: .relaxed)
                try replyError(request, errno: errno, message: reason, structured: outcome.structuredReplies)
                throw .handshake(reason)
            case let .serve(command):
                counters.served.add(1, ordering: .relaxed)
                workers.reserve()
                var payload: UnsafeMutableRawBufferPointer?
                if command == .write {
                    let data = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(request.length), alignment: 4096)
                    do {
                        try socket.read(into: data)
                    } catch {
                        data.deallocate()
                        workers.cancelReservation()
                        throw error
                    }
                    payload = data
                }
                let job = NBDJob(command: command, request: request, payload: payload)
                if socket.hasPendingInput {
                    // More requests are queued: serve this one beside them.
                    workers.submit(job)
                } else {
                    // A lone request is served right here: no hand-off.
                    workers.serveHere(job)
                }
            }
        }
    }

    private func serve(_ command: NBDCommand, _ request: NBDRequest, payload: UnsafeMutableRawBufferPointer?,
                       device: any BlockDevice, structured: Bool) throws(NBDProtocolError) {
        let fua = request.flags & NBDCommandFlag.fua != 0
        let length = Int(request.length)
        do {
            switch command {
            case .read:
                let data = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
                defer { data.deallocate() }
                do {
                    try device.read(into: data, at: request.offset)
                } catch {
                    return try replyError(request, errno: error.nbdErrno, message: "\(error)", structured: structured)
                }
                try replyData(request, data: UnsafeRawBufferPointer(data), structured: structured)
                return
            case .write:
                let data = payload ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
                if !fua, let early = device as? any EarlyAcknowledgingDevice {
                    return try writeAcknowledgingEarly(request, data: UnsafeRawBufferPointer(data), to: early,
                                                       structured: structured)
                }
                try device.write(UnsafeRawBufferPointer(data), at: request.offset, fua: fua)
            case .flush:
                try device.flush()
            case .trim:
                try device.trim(at: request.offset, length: UInt64(request.length), fua: fua)
            case .writeZeroes:
                if request.flags & NBDCommandFlag.fastZero != 0 {
                    return try replyError(request, errno: NBDErrno.enotsup, message: "no fast zeroing", structured: structured)
                }
                try device.writeZeroes(at: request.offset, length: UInt64(request.length), fua: fua)
            case .blockStatus:
                let extents = try device.allocation(at: request.offset, length: UInt64(request.length))
                return try replyBlockStatus(request, extents: extents)
            case .disconnect, .cache:
                return
            }
        } catch let error as BlockError {
            return try replyError(request, errno: error.nbdErrno, message: "\(error)", structured: structured)
        } catch let error as NBDProtocolError {
            throw error
        } catch {
            return try replyError(request, errno: NBDErrno.eio, message: "\(error)", structured: structured)
        }
        try replySimple(request, errno: 0)
    }

    /// Replies as soon as the device has ordered the write; a failure after
    /// that is the device's to report (to every later request).
    private func writeAcknowledgingEarly(_ request: NBDRequest, data: UnsafeRawBufferPointer,
                                         to device: any EarlyAcknowledgingDevice, structured: Bool)
        throws(NBDProtocolError) {
        var acknowledged = false
        var replyFailure: NBDProtocolError?
        do throws(BlockError) {
            try device.write(data, at: request.offset) {
                acknowledged = true
                do throws(NBDProtocolError) { try replySimple(request, errno: 0) } catch { replyFailure = error }
            }
        } catch {
            if !acknowledged {
                return try replyError(request, errno: error.nbdErrno, message: "\(error)", structured: structured)
            }
            logger.error("an acknowledged write failed: \(error)", metadata: [
                "event": "nbd_acknowledged_write_failed", "offset": "\(request.offset)", "reason": "\(error)",
            ])
        }
        if let replyFailure { throw replyFailure }
    }

    private func replySimple(_ request: NBDRequest, errno: UInt32, data: UnsafeRawBufferPointer? = nil)
        throws(NBDProtocolError) {
        var header = BigEndianWriter(capacity: 16)
        header.uint32(NBDMagic.simpleReply)
        header.uint32(errno)
        header.uint64(request.cookie)
        try socket.send(header.bytes, payload: data)
    }

    private func replyData(_ request: NBDRequest, data: UnsafeRawBufferPointer, structured: Bool)
        throws(NBDProtocolError) {
        guard structured else { return try replySimple(request, errno: 0, data: data) }
        var header = chunkHeader(request, type: NBDReplyType.offsetData, length: 8 + data.count)
        header.uint64(request.offset)
        try socket.send(header.bytes, payload: data)
    }

    private func replyError(_ request: NBDRequest, errno: UInt32, message: String, structured: Bool)
        throws(NBDProtocolError) {
        guard structured else { return try replySimple(request, errno: errno) }
        let text = Array(message.utf8.prefix(4096))
        var header = chunkHeader(request, type: NBDReplyType.error, length: 6 + text.count)
        header.uint32(errno)
        header.uint16(UInt16(text.count))
        header.bytes(text)
        try socket.send(header.bytes)
    }

    private func replyBlockStatus(_ request: NBDRequest, extents: [BlockExtent]) throws(NBDProtocolError) {
        let wanted = request.flags & NBDCommandFlag.reqOne != 0 ? Array(extents.prefix(1)) : extents
        var header = chunkHeader(request, type: NBDReplyType.blockStatus, length: 4 + 8 * wanted.count)
        header.uint32(Self.baseAllocationContextID)
        for extent in wanted {
            header.uint32(UInt32(extent.length))
            // NBD_STATE_HOLE | NBD_STATE_ZERO for what reads as zeros.
            header.uint32(extent.hasData ? 0 : 3)
        }
        try socket.send(header.bytes)
    }

    private func chunkHeader(_ request: NBDRequest, type: UInt16, length: Int) -> BigEndianWriter {
        var header = BigEndianWriter(capacity: 20 + 8)
        header.uint32(NBDMagic.structuredReply)
        header.uint16(NBDReplyType.flagDone)
        header.uint16(type)
        header.uint64(request.cookie)
        header.uint32(UInt32(length))
        return header
    }
}

extension BlockError {
    /// The NBD error a client sees for this failure.
    public var nbdErrno: UInt32 {
        switch self {
        case let .io(_, errno): return errno == ENOSPC ? NBDErrno.enospc : NBDErrno.eio
        case .outOfRange: return NBDErrno.einval
        case .readOnly: return NBDErrno.eperm
        case .unsupported: return NBDErrno.enotsup
        case .disconnected, .unavailable: return NBDErrno.eio
        case let .remote(errno, _): return errno
        }
    }
}
