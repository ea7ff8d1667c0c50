import BlockProtocol
import ColoProtocol
import GuestMemory
import Glibc
import SystemPackage

/// Counters of a block device, for status replies.
public struct BlockCounters: Sendable, Equatable {
    public var reads: UInt64 = 0
    public var writes: UInt64 = 0
    public var flushes: UInt64 = 0
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    /// Requests answered with an error status (by vmmd or the service).
    public var failed: UInt64 = 0
}

/// The disk as the block service described it at attach.
public struct BlockDisk: Sendable, Equatable {
    public var capacityBytes: UInt64
    public var readOnly: Bool
    public var supportsFlush: Bool
    public var serial: String

    public init(capacityBytes: UInt64, readOnly: Bool, supportsFlush: Bool, serial: String) {
        self.capacityBytes = capacityBytes
        self.readOnly = readOnly
        self.supportsFlush = supportsFlush
        self.serial = serial
    }
}

/// virtio-blk (legacy) over the block service's data path (block.proto):
/// vmmd parses and checks each request, names the guest's data buffers to
/// the service, which reads or writes them through the RAM memfd; on its
/// completion vmmd writes the status byte and returns the chain.
///
/// Requests the service need not see are answered here: out of range or
/// misaligned (IOERR), writes to a read-only disk (IOERR), GET_ID (the
/// serial), unknown types (UNSUPP). If the service goes away, requests in
/// flight and later ones fail with IOERR.
public final class VirtioBlock: VirtioDeviceModel, @unchecked Sendable {
    static let sectorSize = 512
    static let headerLength = 16
    static let featureSegmentMax: UInt32 = 1 << 2, featureReadOnly: UInt32 = 1 << 5
    static let featureBlockSize: UInt32 = 1 << 6, featureFlush: UInt32 = 1 << 9
    static let typeIn: UInt32 = 0, typeOut: UInt32 = 1, typeFlush: UInt32 = 4, typeGetID: UInt32 = 8
    static let statusOK: UInt8 = 0, statusIOError: UInt8 = 1, statusUnsupported: UInt8 = 2
    static let queueSize: UInt16 = 128

    public let pciDeviceID: UInt16 = 0x1001
    public let virtioDeviceType: UInt16 = 2
    public let pciClassCode: UInt32 = 0x01_0000
    public let deviceFeatures: UInt32
    public let queueSizes: [UInt16] = [queueSize]

    public let disk: BlockDisk
    private let channel: BlockChannel
    private let configuration: [UInt8]
    private var serviceDown = false
    private var released = false
    private var nextID: UInt64 = 1
    /// Read with the transport's lock held (`VirtioPciTransport.locked`).
    public private(set) var counters = BlockCounters()
    private let onEvent: @Sendable (String) -> Void

    /// A request the service holds.
    struct InFlight {
        var head: UInt16
        var status: GuestSegment
        var operation: ColoBlockOperation
        var buffers: [GuestSegment]
        var length: Int
    }
    var inFlight: [UInt64: InFlight] = [:]

    /// - Parameters:
    ///   - channel: the attached data path (non-blocking is set here);
    ///     its socket is closed with the device.
    public init(disk: BlockDisk, channel: BlockChannel, onEvent: @escaping @Sendable (String) -> Void) {
        self.disk = disk
        self.channel = channel
        self.onEvent = onEvent
        channel.setNonBlocking()
        var features = Self.featureSegmentMax | Self.featureBlockSize
        if disk.readOnly { features |= Self.featureReadOnly }
        if disk.supportsFlush { features |= Self.featureFlush }
        deviceFeatures = features
        // capacity (sectors), size_max, seg_max, geometry, blk_size.
        let sectors = disk.capacityBytes / UInt64(Self.sectorSize)
        var configuration: [UInt8] = []
        configuration += withUnsafeBytes(of: sectors.littleEndian) { Array($0) }
        configuration += withUnsafeBytes(of: UInt32(0).littleEndian) { Array($0) }
        configuration += withUnsafeBytes(of: UInt32(Self.queueSize - 2).littleEndian) { Array($0) }
        configuration += [0, 0, 0, 0]
        configuration += withUnsafeBytes(of: UInt32(Self.sectorSize).littleEndian) { Array($0) }
        self.configuration = configuration
    }

    deinit {
        release()
    }

    public func release() {
        guard !released else { return }
        released = true
        serviceDown = true
        channel.socket.close()
    }

    public func configByte(at offset: Int) -> UInt8 {
        offset < configuration.count ? configuration[offset] : 0xFF
    }

    /// How long a vCPU thread that just sent requests waits for their
    /// completions before it returns to the guest. A guest that notified
    /// waits for its I/O anyway (the test guest halts until the interrupt);
    /// taking the completion here saves the hop to the device thread and
    /// the interrupt is pending on the guest's next instruction. Later
    /// completions go the device thread's way.
    static let completionWaitMilliseconds: Int32 = 2

    public func queueNotified(_ queue: Int, device: VirtioDeviceAccess) {
        while let chain = device.pop(0) {
            submit(chain, device)
        }
        if device.onVcpuThread, !inFlight.isEmpty, !serviceDown {
            // A kick (another device's interrupt waking this vCPU) ends the
            // poll early with EINTR: wait out the rest.
            let deadline = ContinuousClock.now.advanced(by: .milliseconds(Self.completionWaitMilliseconds))
            var entry = pollfd(fd: channel.fd.rawValue, events: Int16(POLLIN), revents: 0)
            var ready: Int32
            repeat {
                let left = max(0, (deadline - .now) / .milliseconds(1))
                ready = poll(&entry, 1, Int32(left.rounded(.up)))
            } while ready < 0 && errno == EINTR
            if ready > 0 {
                backendReady(fd: channel.fd, revents: entry.revents, device: device)
            }
        }
    }

    public func statusChanged(device: VirtioDeviceAccess) {}

    public func reset() {
        // Completions still to come belong to the old queue: ignored.
        inFlight.removeAll()
    }

    public func backendInterests(device: VirtioDeviceAccess) -> [PollInterest] {
        serviceDown ? [] : [PollInterest(fd: channel.fd, events: Int16(POLLIN))]
    }

    /// Takes completions while requests are outstanding: with the usual
    /// one request in flight that is one recvmsg per completion, not a
    /// second one to learn the socket is empty (poll reports the socket
    /// again if a message is still waiting).
    public func backendReady(fd: FileDescriptor, revents: Int16, device: VirtioDeviceAccess) {
        guard !serviceDown else { return }
        repeat {
            let received: (ColoBlockMessage, [FileDescriptor])?
            do {
                received = try channel.receive()
            } catch {
                serviceLost("\(error)", device)
                return
            }
            guard let (message, fds) = received else { return }
            fds.forEach { try? $0.close() }
            switch message.body {
            case .completion(let completion):
                finish(completion, device)
            case .error(let error):
                serviceLost("the block service ended the session: \(error.message)", device)
            default:
                serviceLost("unexpected message from the block service", device)
            }
        } while !serviceDown && !inFlight.isEmpty
    }

    private func submit(_ chain: DescriptorChain, _ device: VirtioDeviceAccess) {
        guard chain.readableLength >= Self.headerLength, let last = chain.writable.last else {
            device.fail("block request \(chain.head) lacks a 16-byte header or a status byte")
            return
        }
        let status = GuestSegment(address: last.address + UInt64(last.length) - 1, length: 1)
        let header: [UInt8]
        do {
            header = try GuestIO.gather(chain.readable, count: Self.headerLength, memory: device.memory)
        } catch {
            device.fail("block request header: \(error)")
            return
        }
        let type = header.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        let sector = header.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
        let dataIn = GuestIO.slice(chain.writable, from: 0, count: chain.writableLength - 1)
        let dataOut = GuestIO.slice(chain.readable, from: Self.headerLength,
                                    count: chain.readableLength - Self.headerLength)
        var request = ColoBlockRequest()
        let length: Int
        switch type {
        case Self.typeIn:
            request.operation = .read
            request.buffers = dataIn.map(Self.buffer)
            length = chain.writableLength - 1
        case Self.typeOut:
            guard !disk.readOnly else { return answer(chain, status, Self.statusIOError, 0, device) }
            request.operation = .write
            request.buffers = dataOut.map(Self.buffer)
            length = chain.readableLength - Self.headerLength
        case Self.typeFlush where disk.supportsFlush:
            request.operation = .flush
            length = 0
        case Self.typeGetID:
            let room = min(20, chain.writableLength - 1)
            let serial = Array(disk.serial.utf8.prefix(room))
            do {
                try GuestIO.scatter(serial + [UInt8](repeating: 0, count: room - serial.count), into: dataIn,
                                    memory: device.memory)
            } catch {
                return answer(chain, status, Self.statusIOError, 0, device)
            }
            return answer(chain, status, Self.statusOK, UInt32(room), device)
        default:
            return answer(chain, status, Self.statusUnsupported, 0, device)
        }
        if request.operation == .read || request.operation == .write {
            let (offset, overflow) = sector.multipliedReportingOverflow(by: UInt64(Self.sectorSize))
            guard !overflow, length % Self.sectorSize == 0,
                  offset <= disk.capacityBytes, UInt64(length) <= disk.capacityBytes - offset else {
                return answer(chain, status, Self.statusIOError, 0, device)
            }
            request.offset = offset
        }
        guard !serviceDown else {
            return answer(chain, status, Self.statusIOError, 0, device)
        }
        request.id = nextID
        nextID += 1
        var message = ColoBlockMessage()
        message.body = .request(request)
        do {
            try channel.send(message)
        } catch {
            serviceLost("\(error)", device)
            return answer(chain, status, Self.statusIOError, 0, device)
        }
        inFlight[request.id] = InFlight(head: chain.head, status: status, operation: request.operation,
                                        buffers: dataIn, length: length)
    }

    private static func buffer(_ segment: GuestSegment) -> ColoGuestBuffer {
        var buffer = ColoGuestBuffer()
        buffer.guestAddress = segment.address
        buffer.length = segment.length
        return buffer
    }

    private func finish(_ completion: ColoBlockCompletion, _ device: VirtioDeviceAccess) {
        guard let request = inFlight.removeValue(forKey: completion.id) else { return }
        let status: UInt8
        switch completion.status {
        case .ok: status = Self.statusOK
        case .unsupported: status = Self.statusUnsupported
        default: status = Self.statusIOError
        }
        var written: UInt32 = 0
        switch (request.operation, status) {
        case (.read, Self.statusOK):
            written = UInt32(min(Int(completion.bytesToGuest), request.length))
            for buffer in GuestIO.slice(request.buffers, from: 0, count: Int(written)) {
                device.memory.recordWrite(at: buffer.address, length: Int(buffer.length))
            }
            counters.reads += 1
            counters.bytesRead += UInt64(written)
        case (.write, Self.statusOK):
            counters.writes += 1
            counters.bytesWritten += UInt64(request.length)
        case (.flush, Self.statusOK):
            counters.flushes += 1
        default:
            break
        }
        answer(request.head, request.status, status, written, device)
    }

    private func answer(_ chain: DescriptorChain, _ status: GuestSegment, _ value: UInt8, _ written: UInt32,
                        _ device: VirtioDeviceAccess) {
        answer(chain.head, status, value, written, device)
    }

    /// Writes the status byte and returns the chain: `written` data bytes
    /// plus the status byte.
    private func answer(_ head: UInt16, _ status: GuestSegment, _ value: UInt8, _ written: UInt32,
                        _ device: VirtioDeviceAccess) {
        if value != Self.statusOK { counters.failed += 1 }
        do {
            try device.memory.store(value, at: status.address)
        } catch {
            device.fail("status byte: \(error)")
            return
        }
        device.complete(0, head: head, length: written + 1)
    }

    private func serviceLost(_ reason: String, _ device: VirtioDeviceAccess) {
        guard !serviceDown else { return }
        serviceDown = true
        onEvent("block service lost: \(reason)")
        for request in inFlight.values {
            answer(request.head, request.status, Self.statusIOError, 0, device)
        }
        inFlight.removeAll()
    }
}
