import BlockDevice
import BlockProtocol
import ColoProtocol
import ControlSocket
import GuestMemory
import Logging
import SystemPackage

/// blockd's side of vmmd's virtio-blk data path (Proto/colo/control/
/// block.proto) for one disk: waits for `attach` with the guest RAM memfd,
/// answers `attached`, then serves requests by reading and writing guest
/// buffers in place through its own mapping of guest RAM, one completion
/// per request.
///
/// Bad input never crashes it: a buffer outside guest RAM, a request past
/// the end of the disk or an unknown operation is an error completion; an
/// undecodable datagram or a second attach ends the session with an
/// `error` message.
public final class BlockSession: Sendable {
    /// Largest total of guest buffers one request may name.
    public static let maxRequestBytes: UInt64 = 32 << 20

    private let channel: BlockChannel
    private let device: any BlockDevice
    private let serial: String
    private let logger: Logger

    public init(socket: SeqpacketSocket, device: any BlockDevice, serial: String, logger: Logger) {
        self.channel = BlockChannel(socket: socket)
        self.device = device
        self.serial = serial
        self.logger = logger
    }

    /// Serves until vmmd closes the socket or breaks the protocol.
    public func run() {
        defer { channel.socket.close() }
        do throws(BlockSessionError) {
            let memory = try attach()
            while let (message, fds) = try receive() {
                fds.forEach { try? $0.close() }
                guard case .request(let request) = message.body else {
                    throw .protocolViolation("expected a request")
                }
                let completion = serve(request, memory: memory)
                try send(.completion(completion))
            }
            logger.info("block session closed by vmmd", metadata: ["event": "block_session_closed"])
        } catch {
            logger.warning("block session ended: \(error)", metadata: ["event": "block_session_failed", "reason": "\(error)"])
            var refusal = ColoError()
            refusal.code = .invalidArgument
            refusal.message = "\(error)"
            try? send(.error(refusal))
        }
    }

    private func attach() throws(BlockSessionError) -> GuestMemory {
        guard let (message, received) = try receive() else { throw .protocolViolation("closed before attach") }
        var fds = received
        defer { fds.forEach { try? $0.close() } }
        guard case .attach(let attach) = message.body else {
            throw .protocolViolation("the first message is not attach")
        }
        let index = Int(attach.guestMemory.index)
        guard index < fds.count else { throw .badAttach("attach names fd \(index) but carries \(fds.count)") }
        let memoryFd = fds.remove(at: index)
        let regions = attach.regions.map {
            GuestRegion(guestAddress: $0.guestAddress, size: $0.size, memfdOffset: $0.memfdOffset)
        }
        let memory: GuestMemory
        do { memory = try GuestMemory(adopting: memoryFd, regions: regions) } catch { throw .badAttach("\(error)") }
        var attached = ColoBlockAttached()
        attached.capacityBytes = device.capacity
        attached.logicalBlockSize = 512
        let features = device.features
        attached.readOnly = features.readOnly
        attached.supportsFlush = features.flush
        attached.supportsDiscard = features.trim
        attached.supportsWriteZeroes = features.writeZeroes
        attached.serial = String(serial.utf8.prefix(20)) ?? ""
        try send(.attached(attached))
        logger.info("block session attached", metadata: [
            "event": "block_session_attached", "regions": "\(attach.regions.count)", "capacity": "\(device.capacity)",
        ])
        return memory
    }

    /// Carries out one request; every failure becomes the completion's status.
    func serve(_ request: ColoBlockRequest, memory: GuestMemory) -> ColoBlockCompletion {
        var completion = ColoBlockCompletion()
        completion.id = request.id
        func fail(_ status: ColoBlockStatus, _ detail: String) -> ColoBlockCompletion {
            completion.status = status
            completion.detail = detail
            return completion
        }
        switch request.operation {
        case .read, .write:
            var buffers: [UnsafeMutableRawBufferPointer] = []
            var total: UInt64 = 0
            for buffer in request.buffers {
                guard let mapped = try? memory.buffer(at: buffer.guestAddress, length: Int(buffer.length)) else {
                    return fail(.ioError, "buffer 0x\(String(buffer.guestAddress, radix: 16))+\(buffer.length) is outside guest RAM")
                }
                buffers.append(mapped)
                total += UInt64(buffer.length)
            }
            guard total <= Self.maxRequestBytes else { return fail(.ioError, "request of \(total) bytes is too large") }
            guard device.contains(offset: request.offset, length: total) else {
                return fail(.ioError, "range \(request.offset)+\(total) lies beyond the disk")
            }
            var offset = request.offset
            do throws(BlockError) {
                for (index, buffer) in buffers.enumerated() {
                    if request.operation == .read {
                        try device.read(into: buffer, at: offset)
                    } else {
                        // FUA on the last piece covers the whole request.
                        try device.write(UnsafeRawBufferPointer(buffer), at: offset,
                                         fua: request.fua && index == buffers.count - 1)
                    }
                    offset += UInt64(buffer.count)
                }
            } catch {
                return fail(.ioError, "\(error)")
            }
            if request.operation == .read { completion.bytesToGuest = UInt32(total) }
        case .flush:
            do throws(BlockError) { try device.flush() } catch { return fail(.ioError, "\(error)") }
        case .discard, .writeZeroes:
            guard device.contains(offset: request.offset, length: request.length) else {
                return fail(.ioError, "range \(request.offset)+\(request.length) lies beyond the disk")
            }
            do throws(BlockError) {
                if request.operation == .discard {
                    try device.trim(at: request.offset, length: request.length, fua: false)
                } else {
                    try device.writeZeroes(at: request.offset, length: request.length, fua: false)
                }
            } catch {
                return fail(.ioError, "\(error)")
            }
        case .unspecified, .UNRECOGNIZED:
            return fail(.unsupported, "operation \(request.operation.rawValue) is not supported")
        }
        completion.status = .ok
        return completion
    }

    /// The next message (blocking), nil when vmmd closed the socket.
    private func receive() throws(BlockSessionError) -> (ColoBlockMessage, [FileDescriptor])? {
        do {
            return try channel.receive()
        } catch .closed {
            return nil
        } catch .protocolViolation(let detail) {
            throw .protocolViolation(detail)
        } catch {
            throw .socket("\(error)")
        }
    }

    private func send(_ body: ColoBlockMessage.OneOf_Body) throws(BlockSessionError) {
        var message = ColoBlockMessage()
        message.body = body
        do {
            try channel.send(message)
        } catch {
            throw .socket("\(error)")
        }
    }
}
