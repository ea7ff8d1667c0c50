import BlockDevice
import BlockImages
import BlockReplication
import Glibc
import Logging
import NBD
import XCTest

/// Primary and secondary in one process, linked by a real NBD connection
/// (a Unix stream socketpair), driven by a random workload and checked
/// against a model of what each side must see.
final class ReplicationSemanticsTests: XCTestCase {
    let capacity: UInt64 = 2 << 20
    var directory = ""
    let logger = Logger(label: "test")

    override func setUp() {
        directory = "/tmp/colo-replication-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
    }

    override func tearDown() {
        _ = system("rm -rf \(directory)")
    }

    struct Pair {
        let primary: ReplicatedDisk
        let secondary: SecondaryDisk
        let server: NBDServer
    }

    func makePair() throws -> Pair {
        let primaryImage = try RawImage(path: "\(directory)/primary.img", createSize: capacity)
        let secondaryImage = try RawImage(path: "\(directory)/secondary.img", createSize: capacity)
        let secondary = try SecondaryDisk(
            secondary: secondaryImage,
            active: try OverlayImage(path: "\(directory)/active.ovl", capacity: capacity),
            hidden: try OverlayImage(path: "\(directory)/hidden.ovl", capacity: capacity))
        let server = NBDServer(logger: logger)
        let catalog = NBDExportCatalog()
        catalog.add(NBDExport(name: "disk0", device: secondary.primaryWrites))
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds), 0)
        server.serve(connection: fds[1], catalog: catalog, peer: "test")
        let client = try NBDClient.connect(fd: fds[0], export: "disk0")
        let primary = ReplicatedDisk(local: primaryImage, logger: logger)
        try primary.replicate(to: client)
        return Pair(primary: primary, secondary: secondary, server: server)
    }

    /// A random range, sometimes unaligned.
    func randomRange(_ rng: inout some RandomNumberGenerator) -> (UInt64, Int) {
        let length = Int.random(in: 1...64, using: &rng) * (Bool.random(using: &rng) ? 512 : 97)
        let offset = UInt64.random(in: 0...(capacity - UInt64(length)), using: &rng)
        let aligned = Bool.random(using: &rng)
        return (aligned ? offset / 512 * 512 : offset, length)
    }

    func testRandomWorkloadCheckpointsAndFailover() throws {
        var rng = SystemRandomNumberGenerator()
        let pair = try makePair()
        var primaryModel = [UInt8](repeating: 0, count: Int(capacity))
        var checkpointModel = primaryModel
        var viewModel = primaryModel
        let view = pair.secondary.guestView

        for round in 0..<6 {
            for _ in 0..<150 {
                let (offset, length) = randomRange(&rng)
                let range = Int(offset)..<(Int(offset) + length)
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<5:
                    let data = pattern(length, &rng)
                    try pair.primary.write(data, at: offset, fua: Int.random(in: 0..<8, using: &rng) == 0)
                    primaryModel.replaceSubrange(range, with: data)
                case 5:
                    try pair.primary.flush()
                case 6:
                    try pair.primary.trim(at: offset, length: UInt64(length), fua: false)
                    primaryModel.replaceSubrange(range, with: repeatElement(0, count: length))
                case 7..<9:
                    let data = pattern(length, &rng)
                    try view.write(data, at: offset)
                    viewModel.replaceSubrange(range, with: data)
                default:
                    try view.writeZeroes(at: offset, length: UInt64(length), fua: false)
                    viewModel.replaceSubrange(range, with: repeatElement(0, count: length))
                }
            }
            // Between checkpoints: the last checkpoint plus the guest's own writes.
            XCTAssertEqual(try view.read(at: 0, count: Int(capacity)), viewModel, "round \(round): view")
            XCTAssertEqual(try pair.secondary.secondary.read(at: 0, count: Int(capacity)), primaryModel,
                           "round \(round): the secondary disk holds every primary write")
            XCTAssertEqual(try pair.primary.read(at: 0, count: Int(capacity)), primaryModel)
            _ = checkpointModel
            if round < 5 {
                pair.primary.drain()
                try pair.secondary.checkpoint()
                checkpointModel = primaryModel
                viewModel = primaryModel
                XCTAssertEqual(try view.read(at: 0, count: Int(capacity)), primaryModel, "round \(round): checkpoint")
                XCTAssertEqual(pair.secondary.overlayBytes.active, 0)
            }
        }
        XCTAssertEqual(pair.primary.state, "replicating")
        try FailoverCommit(journalPath: "\(directory)/commit.journal").run(pair.secondary)
        XCTAssertEqual(try pair.secondary.secondary.read(at: 0, count: Int(capacity)), viewModel, "failover commit")
        XCTAssertEqual(pair.secondary.overlayBytes.hidden, 0)
    }

    func testInterruptedCommitIsFinishedOnRecovery() throws {
        let pair = try makePair()
        let view = pair.secondary.guestView
        try pair.primary.write([UInt8](repeating: 1, count: 4096), at: 0)
        pair.primary.drain()
        try pair.secondary.checkpoint()
        try pair.primary.write([UInt8](repeating: 2, count: 4096), at: 0)   // hidden keeps the 1s
        try view.write([UInt8](repeating: 3, count: 512), at: 512)            // active
        var expected = [UInt8](repeating: 1, count: 4096)
        expected.replaceSubrange(512..<1024, with: repeatElement(3, count: 512))
        XCTAssertEqual(try view.read(at: 0, count: 4096), expected)
        // A commit that died after writing its journal: recovery redoes it.
        let journal = "\(directory)/commit.journal"
        let fd = open(journal, O_WRONLY | O_CREAT, 0o600)
        _ = write(fd, "copying\n", 8)
        close(fd)
        let commit = FailoverCommit(journalPath: journal)
        XCTAssertTrue(commit.isPending)
        XCTAssertTrue(try commit.recover(pair.secondary))
        XCTAssertFalse(commit.isPending)
        XCTAssertEqual(try pair.secondary.secondary.read(at: 0, count: 4096), expected)
        XCTAssertFalse(try commit.recover(pair.secondary))
    }

    func testResyncUnderConcurrentWriterConverges() throws {
        let sourceImage = try RawImage(path: "\(directory)/source.img", createSize: capacity)
        let partnerImage = try RawImage(path: "\(directory)/partner.img", createSize: capacity)
        try partnerImage.write([UInt8](repeating: 0xee, count: 256 << 10), at: 1 << 20) // stale data to be zeroed
        try sourceImage.write([UInt8](repeating: 0x11, count: 512 << 10), at: 0)
        let source = ReplicatedDisk(local: sourceImage, logger: logger)
        let server = NBDServer(logger: logger)
        let catalog = NBDExportCatalog()
        catalog.add(NBDExport(name: "disk0", device: partnerImage))
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds), 0)
        server.serve(connection: fds[1], catalog: catalog, peer: "test")
        let mirror = try source.resync(to: try NBDClient.connect(fd: fds[0], export: "disk0"))
        var rng = SystemRandomNumberGenerator()
        var writes = 0
        while mirror.progress.phase != .replicating || writes < 200 {
            XCTAssertNotEqual(mirror.progress.phase, .failed, mirror.progress.error ?? "")
            let (offset, length) = randomRange(&rng)
            try source.write(pattern(length, &rng), at: offset)
            writes += 1
            if writes > 20_000 { return XCTFail("resync never converged: \(mirror.progress)") }
        }
        XCTAssertEqual(source.state, "replicating")
        source.drain()
        XCTAssertEqual(try partnerImage.read(at: 0, count: Int(capacity)), try sourceImage.read(at: 0, count: Int(capacity)))
        XCTAssertGreaterThanOrEqual(mirror.progress.scannedBytes, capacity)
    }
}

/// Bytes that differ from write to write and within a write, made fast
/// enough for debug builds (random bytes one at a time are not).
func pattern(_ count: Int, _ rng: inout some RandomNumberGenerator) -> [UInt8] {
    var words = (0..<(count + 7) / 8).map { UInt64($0) &* 0x9e37_79b9_7f4a_7c15 }
    let seed = UInt64.random(in: 0...UInt64.max, using: &rng)
    for index in words.indices { words[index] ^= seed }
    return words.withUnsafeBytes { Array($0.prefix(count)) }
}
