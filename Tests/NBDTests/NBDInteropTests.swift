import BlockDevice
import BlockImages
import BlockReplication
import Glibc
import Logging
import NBD
import XCTest

/// blockd's NBD client against other servers: qemu-nbd serving a raw file
/// and nbdkit's memory plugin, each on a Unix socket of the test's own.
/// Contents are checked by hash, and a resync mirror runs against each.
final class NBDInteropTests: XCTestCase {
    var directory = ""
    var servers: [pid_t] = []

    override func setUp() {
        directory = "/tmp/colo-nbd-interop-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
    }

    override func tearDown() {
        for pid in servers {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        _ = system("rm -rf \(directory)")
    }

    private func tool(_ name: String) throws -> String {
        for directory in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] where access("\(directory)/\(name)", X_OK) == 0 {
            return "\(directory)/\(name)"
        }
        throw XCTSkip("\(name) is not installed (scripts/debian-packages.txt lists it)")
    }

    private func spawn(_ arguments: [String]) {
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        XCTAssertEqual(posix_spawn(&pid, arguments[0], nil, nil, argv, environ), 0)
        servers.append(pid)
    }

    private func connect(_ path: String, export: String) throws -> NBDClient {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if connected == 0 { return try NBDClient.connect(fd: fd, export: export) }
            close(fd)
            guard ContinuousClock.now < deadline else { throw XCTSkip("the server at \(path) never listened") }
            usleep(20_000)
        }
    }

    /// Random writes through the client, then the whole export read back.
    private func exercise(_ client: NBDClient, reference: inout [UInt8]) throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let length = Int.random(in: 1...128, using: &rng) * 512
            let offset = UInt64.random(in: 0...(client.capacity - UInt64(length)) / 512, using: &rng) * 512
            let data = pattern(length, &rng)
            try client.write(data, at: offset, fua: Bool.random(using: &rng))
            reference.replaceSubrange(Int(offset)..<(Int(offset) + length), with: data)
        }
        try client.flush()
        if client.features.writeZeroes {
            try client.writeZeroes(at: 4096, length: 8192, fua: false)
            reference.replaceSubrange(4096..<12288, with: repeatElement(0, count: 8192))
        }
        XCTAssertEqual(try client.read(at: 0, count: Int(client.capacity)), reference)
    }

    private func mirror(to client: NBDClient) throws {
        let source = try RawImage(path: "\(directory)/source.img", createSize: client.capacity)
        var rng = SystemRandomNumberGenerator()
        try source.write(pattern(1 << 20, &rng), at: 1 << 20)
        let disk = ReplicatedDisk(local: source, logger: Logger(label: "test"))
        let mirror = try disk.resync(to: client)
        let deadline = ContinuousClock.now + .seconds(30)
        while mirror.progress.phase != .replicating {
            XCTAssertNotEqual(mirror.progress.phase, .failed, mirror.progress.error ?? "")
            guard ContinuousClock.now < deadline else { return XCTFail("no convergence: \(mirror.progress)") }
            usleep(10_000)
        }
        try disk.write([UInt8](repeating: 0x42, count: 4096), at: 0)
        XCTAssertEqual(try client.read(at: 0, count: Int(client.capacity)), try source.read(at: 0, count: Int(client.capacity)))
    }

    func testClientAgainstQemuNbd() throws {
        let qemuNbd = try tool("qemu-nbd")
        let image = "\(directory)/qemu.img"
        let fd = open(image, O_CREAT | O_RDWR, 0o600)
        ftruncate(fd, 8 << 20)
        close(fd)
        spawn([qemuNbd, "--format=raw", "--export-name=disk", "--socket=\(directory)/qemu.sock", "--persistent", image])
        let client = try connect("\(directory)/qemu.sock", export: "disk")
        XCTAssertEqual(client.capacity, 8 << 20)
        XCTAssertTrue(client.structuredReplies)
        var reference = [UInt8](repeating: 0, count: 8 << 20)
        try exercise(client, reference: &reference)
        XCTAssertThrowsError(try client.read(at: (8 << 20) - 512, count: 4096), "a read past the end is refused")
        try mirror(to: client)
        client.disconnect()
    }

    func testClientAgainstNbdkitMemory() throws {
        let nbdkit = try tool("nbdkit")
        spawn([nbdkit, "--foreground", "--unix", "\(directory)/nbdkit.sock", "memory", "8M"])
        let client = try connect("\(directory)/nbdkit.sock", export: "")
        XCTAssertEqual(client.capacity, 8 << 20)
        var reference = [UInt8](repeating: 0, count: 8 << 20)
        try exercise(client, reference: &reference)
        try mirror(to: client)
        client.disconnect()
    }

    func testListExportsOfQemuNbd() throws {
        let qemuNbd = try tool("qemu-nbd")
        let image = "\(directory)/list.img"
        let fd = open(image, O_CREAT | O_RDWR, 0o600)
        ftruncate(fd, 1 << 20)
        close(fd)
        spawn([qemuNbd, "--format=raw", "--export-name=named", "--socket=\(directory)/list.sock", "--persistent", image])
        let client = try connect("\(directory)/list.sock", export: "named")
        client.disconnect()
        let socketFd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array("\(directory)/list.sock".utf8)) }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(socketFd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        XCTAssertEqual(try NBDClient.listExports(fd: socketFd), ["named"])
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
