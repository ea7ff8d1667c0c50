import BlockProtocol
import ColoProtocol
import ControlSocket
@testable import Devices
import Glibc
import GuestMemory
import SystemPackage
import XCTest

/// Device models driven through their registers with guest RAM in a memfd,
/// as a (mis)behaving guest driver would drive them.
final class VirtioBlockTests: XCTestCase {
    var memory: GuestMemory!
    var service: BlockChannel!
    var line: RecordingLine!
    var driver: TestDriver!
    var failures: OutputCollector!
    var failureText: FailureLog!

    override func setUpWithError() throws {
        memory = try GuestMemory(size: 4 << 20)
        let (vmmEnd, serviceEnd) = try SeqpacketSocket.pair()
        service = BlockChannel(socket: serviceEnd)
        service.setNonBlocking()
        let disk = BlockDisk(capacityBytes: 1 << 20, readOnly: false, supportsFlush: true, serial: "disk-serial")
        let log = FailureLog()
        failureText = log
        let model = VirtioBlock(disk: disk, channel: BlockChannel(socket: vmmEnd), onEvent: { log.add($0) })
        line = RecordingLine()
        driver = TestDriver(model: model, memory: memory, ports: PortBus(), line: line,
                            failures: { log.add($0) })
        driver.setUpQueue(0, pfn: 0x100)          // rings at 1 MiB
        driver.ready()
    }

    override func tearDown() {
        service.socket.close()
    }

    /// Writes a request header at 0x200000 and returns the chain's buffers.
    func request(type: UInt32, sector: UInt64, data: UInt32 = 512, dataWritable: Bool = true)
        throws -> [(address: UInt64, length: UInt32, writable: Bool)] {
        try memory.store(type, at: 0x20_0000)
        try memory.store(UInt32(0), at: 0x20_0004)
        try memory.store(sector, at: 0x20_0008)
        try memory.store(UInt8(0xFF), at: 0x20_0100)
        var buffers: [(address: UInt64, length: UInt32, writable: Bool)] = [(0x20_0000, 16, false)]
        if data > 0 { buffers.append((0x20_1000, data, dataWritable)) }
        buffers.append((0x20_0100, 1, true))
        return buffers
    }

    var statusByte: UInt8 { (try? memory.load(UInt8.self, at: 0x20_0100)) ?? 0xEE }

    func serviceRequest() throws -> ColoBlockRequest? {
        guard let (message, _) = try service.receive() else { return nil }
        guard case .request(let request) = message.body else { XCTFail("\(message)"); return nil }
        return request
    }

    func complete(_ id: UInt64, _ status: ColoBlockStatus, bytes: UInt32) throws {
        var completion = ColoBlockCompletion()
        completion.id = id
        completion.status = status
        completion.bytesToGuest = bytes
        var message = ColoBlockMessage()
        message.body = .completion(completion)
        try service.send(message)
        // What the device thread does when the socket becomes readable.
        let interest = driver.transport.interests().first!
        driver.transport.ready(fd: interest.fd, revents: Int16(POLLIN))
    }

    func testReadGoesToTheServiceAndCompletesIntoTheRing() throws {
        try driver.offer(0, request(type: 0, sector: 3))
        let request = try XCTUnwrap(try serviceRequest())
        XCTAssertEqual(request.operation, .read)
        XCTAssertEqual(request.offset, 3 * 512)
        XCTAssertEqual(request.buffers.map { [$0.guestAddress, UInt64($0.length)] }, [[0x20_1000, 512]])
        XCTAssertEqual(try driver.used(0).index, 0, "not complete before the service answers")
        XCTAssertFalse(line.isHigh)

        _ = memory.deviceWrites.takePages()
        try complete(request.id, .ok, bytes: 512)
        XCTAssertEqual(statusByte, 0)
        let used = try driver.used(0)
        XCTAssertEqual(used.index, 1)
        XCTAssertEqual(used.entries[0].length, 513)
        XCTAssertTrue(line.isHigh, "INTx asserted while ISR is set")
        XCTAssertTrue(memory.deviceWrites.takePages().contains(0x201), "the service's write into the buffer is dirty")
        XCTAssertEqual(driver.readISR(), 1)
        XCTAssertFalse(line.isHigh, "reading ISR deasserts")
        XCTAssertEqual(driver.readISR(), 0)

        // A completion for an unknown id is ignored.
        try complete(999, .ok, bytes: 512)
        XCTAssertEqual(try driver.used(0).index, 1)
    }

    func testRequestsThatNeedNoServiceAreAnsweredHere() throws {
        try driver.offer(0, request(type: 0, sector: 2048))         // first sector past the end
        XCTAssertEqual(statusByte, 1, "IOERR")
        try driver.offer(0, request(type: 0, sector: 0, data: 100))  // not a sector multiple
        XCTAssertEqual(statusByte, 1)
        try driver.offer(0, request(type: 0, sector: UInt64.max / 256))  // offset overflows
        XCTAssertEqual(statusByte, 1)
        try driver.offer(0, request(type: 77, sector: 0))
        XCTAssertEqual(statusByte, 2, "UNSUPP")
        try driver.offer(0, request(type: 8, sector: 0, data: 20))
        XCTAssertEqual(statusByte, 0)
        XCTAssertEqual(try memory.read(at: 0x20_1000, count: 12), Array("disk-serial\0".utf8))
        XCTAssertNil(try serviceRequest(), "none of these reached the service")
        XCTAssertEqual(try driver.used(0).index, 5)
        XCTAssertEqual(failureText.entries, [])
    }

    func testServiceLossFailsRequestsInFlightAndLater() throws {
        try driver.offer(0, request(type: 1, sector: 0, dataWritable: false))
        XCTAssertNotNil(try serviceRequest())
        service.socket.close()
        let interest = driver.transport.interests().first!
        driver.transport.ready(fd: interest.fd, revents: Int16(POLLIN | POLLHUP))
        XCTAssertEqual(statusByte, 1)
        XCTAssertEqual(try driver.used(0).entries.map(\.length), [1])
        try driver.offer(0, request(type: 0, sector: 0))
        XCTAssertEqual(statusByte, 1)
        XCTAssertTrue(failureText.entries.contains { $0.contains("block service lost") })
    }

    /// Each rule a driver can break fails the device: NEEDS_RESET, a
    /// configuration interrupt, no request to the service, later
    /// notifications ignored until the driver resets the device.
    func expectFailure(_ what: String, file: StaticString = #filePath, line testLine: UInt = #line,
                       _ breakIt: (inout TestDriver) throws -> Void) throws {
        try setUpWithError()
        try breakIt(&driver)
        XCTAssertEqual(driver.status & 0x40, 0x40, "\(what): DEVICE_NEEDS_RESET", file: file, line: testLine)
        XCTAssertEqual(driver.readISR() & 2, 2, "\(what): configuration interrupt", file: file, line: testLine)
        XCTAssertNil(try serviceRequest(), what, file: file, line: testLine)
        XCTAssertEqual(failureText.entries.count, 1, "\(what): \(failureText.entries)", file: file, line: testLine)
        // Ignored while failed; a reset brings the device back.
        try driver.offer(0, request(type: 0, sector: 0))
        XCTAssertNil(try serviceRequest(), what, file: file, line: testLine)
        driver.transport.write(offset: 0x12, size: 1, value: 0)
        XCTAssertEqual(driver.status, 0, what, file: file, line: testLine)
        driver.queues = [:]
        driver.setUpQueue(0, pfn: 0x180)
        driver.ready()
        try driver.offer(0, request(type: 0, sector: 0))
        XCTAssertNotNil(try serviceRequest(), "\(what): works again after reset", file: file, line: testLine)
        tearDown()
    }

    func testDriversThatBreakTheRulesFailTheDevice() throws {
        try expectFailure("descriptor loop") { driver in
            try driver.offer(0, [(0x20_0000, 16, false), (0x20_1000, 512, true)], loopBack: true)
        }
        try expectFailure("buffer outside RAM") { driver in
            try driver.offer(0, [(0x20_0000, 16, false), (0x7FFF_0000, 512, true), (0x20_0100, 1, true)])
        }
        try expectFailure("buffer crossing the end of RAM") { driver in
            try driver.offer(0, [(0x20_0000, 16, false), (0x3F_F000, 0x2000, true), (0x20_0100, 1, true)])
        }
        try expectFailure("available index jump") { driver in
            try driver.corruptAvailableIndex(0, by: 1000)
        }
        try expectFailure("indirect descriptors") { driver in
            try driver.offer(0, [(0x20_0000, 16, false)], flags: 4)
        }
        try expectFailure("readable after writable") { driver in
            try driver.offer(0, [(0x20_0000, 16, false), (0x20_0100, 1, true), (0x20_1000, 512, false)])
        }
        try expectFailure("no status byte") { driver in
            try driver.offer(0, [(0x20_0000, 16, false), (0x20_1000, 512, false)])
        }
        try expectFailure("queue outside RAM") { driver in
            driver.transport.write(offset: 0x0E, size: 2, value: 0)
            driver.transport.write(offset: 0x08, size: 4, value: 0xFFFF_F)
        }
    }

    func testUnknownRegistersAndQueuesAreHarmless() throws {
        driver.transport.write(offset: 0x10, size: 2, value: 9)        // notify a queue that does not exist
        driver.transport.write(offset: 0x0E, size: 2, value: 9)
        XCTAssertEqual(driver.transport.read(offset: 0x0C, size: 2), 0, "no such queue: size 0")
        driver.transport.write(offset: 0x08, size: 4, value: 0x123)    // ignored
        driver.transport.write(offset: 0x00, size: 4, value: 0xFFFF)   // device features are read-only
        XCTAssertEqual(driver.transport.read(offset: 0x00, size: 4) & (1 << 9), 1 << 9)
        XCTAssertEqual(driver.transport.read(offset: 0x14, size: 4), 2048, "capacity in sectors")
        XCTAssertEqual(driver.transport.read(offset: 0x3C, size: 1), 0xFF, "past the configuration")
        XCTAssertEqual(driver.status & 0x40, 0)
    }
}

final class FailureLog: @unchecked Sendable {
    private let lock = ThreadLock()
    private var collected: [String] = []
    func add(_ text: String) { lock.withLock { collected.append(text) } }
    var entries: [String] { lock.withLock { collected } }
}

final class VirtioNetTests: XCTestCase {
    func makeDevice() throws -> (TestDriver, Int32, GuestMemory) {
        let memory = try GuestMemory(size: 4 << 20)
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds), 0)
        let model = VirtioNet(mac: [2, 0, 0, 0, 0, 1], backend: FileDescriptor(rawValue: fds[0]),
                              interestsChanged: {}, onEvent: { _ in })
        var driver = TestDriver(model: model, memory: memory, ports: PortBus(), line: RecordingLine())
        driver.setUpQueue(0, pfn: 0x100)
        driver.setUpQueue(1, pfn: 0x110)
        driver.ready()
        return (driver, fds[1], memory)
    }

    func testTransmitSendsTheFrameWithoutItsHeader() throws {
        var (driver, peer, memory) = try makeDevice()
        defer { close(peer) }
        let frame = (0..<100).map { UInt8($0) }
        try memory.write([UInt8](repeating: 0, count: 10), at: 0x20_0000)
        try memory.write(frame, at: 0x20_1000)
        try driver.offer(1, [(0x20_0000, 10, false), (0x20_1000, 100, false)])
        var buffer = [UInt8](repeating: 0, count: 2000)
        let count = recv(peer, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        XCTAssertEqual(Array(buffer.prefix(count)), frame)
        XCTAssertEqual(try driver.used(1).index, 1)
        XCTAssertEqual(driver.transport.read(offset: 0x14, size: 4), 0x0000_0002, "MAC in configuration")
    }

    func testReceiveFillsPostedBuffersAndDropsOversizedFrames() throws {
        var (driver, peer, memory) = try makeDevice()
        defer { close(peer) }
        for index in 0..<2 {
            let base = 0x20_0000 + UInt64(index) * 0x1000
            try driver.offer(0, [(base, 10, true), (base + 16, 1514, true)])
        }
        let interests = driver.transport.interests()
        XCTAssertEqual(interests.count, 1)
        XCTAssertEqual(interests[0].events & Int16(POLLIN), Int16(POLLIN), "buffers posted: read the socket")
        let big = [UInt8](repeating: 7, count: 3000)
        let frame = [UInt8](repeating: 9, count: 60)
        XCTAssertEqual(send(peer, big, big.count, 0), 3000)
        XCTAssertEqual(send(peer, frame, frame.count, 0), 60)
        try memory.write([UInt8](repeating: 0xEE, count: 10), at: 0x20_0000)
        driver.transport.ready(fd: interests[0].fd, revents: Int16(POLLIN))
        let used = try driver.used(0)
        XCTAssertEqual(used.index, 1, "the oversized frame was dropped, its buffer reused")
        XCTAssertEqual(used.entries[0].length, 70)
        XCTAssertEqual(try memory.read(at: 0x20_0000, count: 10), [UInt8](repeating: 0, count: 10), "zeroed header")
        XCTAssertEqual(try memory.read(at: 0x20_0010, count: 60), frame)
        let counters = driver.transport.locked { (driver.transport.model as! VirtioNet).counters }
        XCTAssertEqual(counters.framesTooLargeForGuest, 1)
        XCTAssertEqual(counters.framesToGuest, 1)
    }

    func testTooSmallReceiveBufferFailsTheDevice() throws {
        var (driver, peer, _) = try makeDevice()
        defer { close(peer) }
        try driver.offer(0, [(0x20_0000, 8, true)])
        let frame = [UInt8](repeating: 9, count: 60)
        XCTAssertEqual(send(peer, frame, frame.count, 0), 60)
        let interests = driver.transport.interests()
        driver.transport.ready(fd: interests[0].fd, revents: Int16(POLLIN))
        XCTAssertEqual(driver.status & 0x40, 0x40)
    }
}
