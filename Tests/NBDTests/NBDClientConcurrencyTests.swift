import BlockDevice
import BlockImages
import ControlSocket
import Dispatch
import Glibc
import Logging
import NBD
import Synchronization
import XCTest

/// One `NBDClient` shared by several threads against blockd's own server:
/// the waiting callers take turns reading the socket for each other, the
/// server answers requests out of order, and a server that stops
/// answering fails every waiter within the timeout.
final class NBDClientConcurrencyTests: XCTestCase {
    var directory = ""

    override func setUp() {
        directory = "/tmp/colo-nbd-client-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
    }

    override func tearDown() {
        _ = system("rm -rf \(directory)")
    }

    private func serve(_ device: any BlockDevice, timeout: Duration = .seconds(30)) throws -> NBDClient {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds), 0)
        let catalog = NBDExportCatalog()
        catalog.add(NBDExport(name: "disk", device: device))
        NBDServer(logger: Logger(label: "test")).serve(connection: fds[1], catalog: catalog, peer: "test")
        return try NBDClient.connect(fd: fds[0], export: "disk", requestTimeout: timeout)
    }

    func testThreadsSharingOneClientEachGetTheirOwnReplies() throws {
        let image = try RawImage(path: "\(directory)/disk.img", createSize: 8 << 20)
        let client = try serve(image)
        let failures = Mutex<[String]>([])
        let group = DispatchGroup()
        for thread in 0..<4 {
            group.enter()
            spawnThread(name: "writer-\(thread)") {
                defer { group.leave() }
                var rng = SystemRandomNumberGenerator()
                let region = UInt64(thread) << 21
                for round in 0..<100 {
                    let length = Int.random(in: 1...64, using: &rng) * 512
                    let offset = region + UInt64.random(in: 0...(UInt64(2 << 20) - UInt64(length)) / 512, using: &rng) * 512
                    let data = pattern(length, &rng)
                    do {
                        try client.write(data, at: offset, fua: round % 10 == 0)
                        let back = try client.read(at: offset, count: length)
                        if back != data { failures.withLock { $0.append("thread \(thread) round \(round): wrong data") } }
                    } catch {
                        failures.withLock { $0.append("thread \(thread) round \(round): \(error)") }
                        return
                    }
                }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success)
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertNil(client.failure)
        client.disconnect()
    }

    func testServerThatStopsAnsweringFailsEveryWaiter() throws {
        let stuck = StuckDevice()
        defer { stuck.release.signal(); stuck.releaseFirst.signal() }
        let client = try serve(stuck, timeout: .milliseconds(500))
        let outcomes = Mutex<[BlockError?]>([])
        let group = DispatchGroup()
        let started = ContinuousClock.now
        for thread in 0..<3 {
            group.enter()
            spawnThread(name: "waiter-\(thread)") {
                defer { group.leave() }
                do throws(BlockError) {
                    try client.write([UInt8](repeating: 1, count: 512), at: UInt64(thread + 1) * 512, fua: false)
                    outcomes.withLock { $0.append(nil) }
                } catch {
                    outcomes.withLock { $0.append(error) }
                }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5))
        let errors = outcomes.withLock { $0 }
        XCTAssertEqual(errors.count, 3)
        for error in errors {
            guard case .disconnected? = error else { return XCTFail("expected a disconnection, got \(String(describing: error))") }
        }
        XCTAssertNotNil(client.failure)
    }

    func testServerAnswersALaterReadWhileEarlierWritesAreStillRunning() throws {
        let stuck = StuckDevice()
        defer { stuck.release.signal(); stuck.releaseFirst.signal() }
        let client = try serve(stuck)
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
        defer { data.deallocate() }
        data.initializeMemory(as: UInt8.self, repeating: 1)
        // Both writes hold a thread of the connection each; the read
        // behind them is read and answered by a third, out of order,
        // while both writes are still running.
        let first = try client.submit(.write, offset: 0, length: 512, payload: UnsafeRawBufferPointer(data))
        XCTAssertEqual(stuck.firstEntered.wait(timeout: .now() + 10), .success)
        let second = try client.submit(.write, offset: 512, length: 512, payload: UnsafeRawBufferPointer(data))
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
        defer { destination.deallocate() }
        let read = try client.submit(.read, offset: 4096, length: 512, destination: destination)
        try client.wait(read)
        XCTAssertEqual(Array(destination), [UInt8](repeating: 0, count: 512))
        XCTAssertEqual(stuck.writesDone.load(ordering: .relaxed), 0, "both writes are still running")
        stuck.releaseFirst.signal()
        try client.wait(first)
        stuck.release.signal()
        try client.wait(second)
        client.disconnect()
    }
}

/// A device whose writes block until released: a server that stopped
/// answering. A write at offset 0 has a gate of its own.
final class StuckDevice: BlockDevice, @unchecked Sendable {
    let release = DispatchSemaphore(value: 0)
    let firstEntered = DispatchSemaphore(value: 0)
    let releaseFirst = DispatchSemaphore(value: 0)
    let writesDone = Atomic<Int>(0)
    var capacity: UInt64 { 1 << 20 }
    var features: BlockFeatures { BlockFeatures() }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        if offset == 0 {
            firstEntered.signal()
            releaseFirst.wait()
        } else {
            release.wait()
            release.signal()
        }
        writesDone.add(1, ordering: .relaxed)
    }
    func flush() throws(BlockError) {}
    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {}
    func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockError) {}
}
