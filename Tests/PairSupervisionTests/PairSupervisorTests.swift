import ColoProtocol
import Foundation
import Glibc
import Logging
import PairConfiguration
import PairStateMachine
import PairSupervision
import PeerAuthentication
import PeerLink
import Witness
import XCTest

/// Two supervisors and a witness over loopback TCP: the real link,
/// heartbeat, watchdog and witness. The actuator records what the pair asks
/// of the local daemons (the supervisor's output), with a synchronisation
/// that succeeds at once.
final class PairSupervisorTests: XCTestCase {
    private var directory: String!
    private let keyText = "the pair's pre-shared key, 32 by"

    override func setUp() {
        directory = NSTemporaryDirectory() + "pair-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try! keyText.write(toFile: directory + "/key", atomically: true, encoding: .utf8)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func configuration(host: String, role: String, listen: UInt16, peer: UInt16,
                               witness: UInt16?) throws -> HostConfiguration {
        let text = """
        [pair]
        name = demo
        host = \(host)
        role = \(role)
        listen = 127.0.0.1:\(listen)
        peer = 127.0.0.1:\(peer)
        key-file = \(directory!)/key
        \(witness.map { "witness = 127.0.0.1:\($0)" } ?? "")
        [guest]
        kernel = /unused/guest.elf
        command-line = ip=10.0.2.15/24
        memory = 64M
        vcpus = 1
        disk = /unused/disk.img
        [network]
        tap = colo0
        guest-mac = 52:54:00:12:34:56
        guest-ip = 10.0.2.15
        [checkpoint]
        max-interval = 2s
        compare-timeout = 20ms
        queue-limit = 1024
        ram-channels = 1
        [heartbeat]
        interval = 20ms
        timeout = 150ms
        """
        return try HostConfiguration(file: ConfigurationFile(text: text, path: "\(host).conf"))
    }

    private func startWitness() throws -> UInt16 {
        let port = TestPorts.next()
        let listener = try TCPConnection.listen(on: SocketAddress(host: IPAddress("127.0.0.1")!, port: port))
        let service = try WitnessService(listener: listener, key: try PeerKey(bytes: Array(keyText.utf8)),
                                         stateFile: nil, logger: Logger(label: "witness"))
        Thread.detachNewThread { service.run() }
        return port
    }

    private func supervisor(_ configuration: HostConfiguration, _ actuator: RecordingActuator) throws -> PairSupervisor {
        let supervisor = try PairSupervisor(configuration: configuration,
                                            key: try PeerKey(bytes: Array(keyText.utf8)),
                                            stateFile: "\(directory!)/\(configuration.pair.host).state",
                                            actuator: actuator, logger: Logger(label: configuration.pair.host))
        supervisor.start()
        return supervisor
    }

    private func wait(_ description: String, timeout: Duration = .seconds(10), _ condition: () -> Bool) {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while !condition() {
            guard ContinuousClock.now < deadline else { return XCTFail("timed out waiting for \(description)") }
            usleep(10_000)
        }
    }

    private func ports() -> (UInt16, UInt16) {
        let base = TestPorts.next()
        return (base, base + 1)
    }

    func testPrimaryLossMakesTheSecondaryTakeOverWithinTheTimeout() throws {
        let witness = try startWitness()
        let (a, b) = ports()
        let primaryActions = RecordingActuator(), secondaryActions = RecordingActuator()
        let primary = try supervisor(try configuration(host: "alpha", role: "primary", listen: a, peer: b,
                                                       witness: witness), primaryActions)
        let secondary = try supervisor(try configuration(host: "beta", role: "secondary", listen: b, peer: a,
                                                         witness: witness), secondaryActions)
        defer { secondary.stop() }
        wait("lock-step") { primary.state == .lockstep && secondary.state == .lockstep }
        wait("lock-step started") { primaryActions.calls.count >= 2 }
        XCTAssertEqual(primaryActions.calls.prefix(2), ["synchronize(primary)", "startLockstep(primary)"])
        wait("a heartbeat carrying lock-step") { secondary.report().peerState == "lockstep" }

        let killed = ContinuousClock.now
        primary.stop()
        wait("take-over") { secondaryActions.calls.last == "takeOver" }
        let took = ContinuousClock.now - killed
        XCTAssertLessThan(took, .seconds(1), "heartbeat timeout 150 ms plus the witness round trip")
        XCTAssertEqual(secondary.role, .primary)
        XCTAssertEqual(secondary.report().epoch, 1)
        XCTAssertEqual(secondaryActions.calls.suffix(2), ["stopReplication", "takeOver"])
        // The new role and epoch survive a restart of supervisord.
        XCTAssertEqual(try String(contentsOfFile: "\(directory!)/beta.state", encoding: .utf8),
                       "role=primary state=alone epoch=1\n")
    }

    func testACutLinkWithTheWitnessOnOneSideYieldsExactlyOnePrimary() throws {
        let witness = try startWitness()
        let (a, b) = ports()
        // alpha (primary) dials beta through a relay that can cut the link
        // without closing it, as a failed switch would.
        let relay = try LinkRelay(forwardingTo: b)
        let alphaActions = RecordingActuator(), betaActions = RecordingActuator()
        // beta cannot reach the witness (nothing listens on its address).
        let alpha = try supervisor(try configuration(host: "alpha", role: "primary", listen: a, peer: relay.port,
                                                     witness: witness), alphaActions)
        let beta = try supervisor(try configuration(host: "beta", role: "secondary", listen: b, peer: a,
                                                    witness: 9), betaActions)
        defer { alpha.stop(); beta.stop() }
        wait("lock-step") { alpha.state == .lockstep && beta.state == .lockstep }
        relay.cut()
        wait("both decided") {
            alphaActions.calls.last == "continueAlone" && betaActions.calls.last?.hasPrefix("fence(") == true
        }
        XCTAssertEqual(alpha.state, .alone)
        XCTAssertEqual(alpha.role, .primary)
        XCTAssertEqual(beta.state, .fenced)
        XCTAssertEqual(beta.role, .secondary, "the fenced side never became a primary")
        XCTAssertTrue(betaActions.calls.contains { $0.hasPrefix("fence(") })
        XCTAssertFalse(betaActions.calls.contains("takeOver"))
        XCTAssertTrue(beta.report().detail.contains("witness could not be asked"), beta.report().detail)
        XCTAssertEqual(alphaActions.calls.suffix(2), ["stopReplication", "continueAlone"])
    }

    /// Failback over the real link and witness: the primary hands over,
    /// the secondary (told by its actuator that the last checkpoint is
    /// loaded) claims the pair and answers; the old primary stands down,
    /// and the new primary resyncs it as its secondary with no operator.
    func testFailbackSwapsTheRolesAndResyncsTheOldPrimary() throws {
        let witness = try startWitness()
        let (a, b) = ports()
        let alphaActions = RecordingActuator(), betaActions = RecordingActuator()
        let alpha = try supervisor(try configuration(host: "alpha", role: "primary", listen: a, peer: b,
                                                     witness: witness), alphaActions)
        let beta = try supervisor(try configuration(host: "beta", role: "secondary", listen: b, peer: a,
                                                    witness: witness), betaActions)
        defer { alpha.stop(); beta.stop() }
        wait("lock-step") { alpha.state == .lockstep && beta.state == .lockstep }
        XCTAssertFalse(beta.operatorFailback(), "the primary leads a failback")
        XCTAssertTrue(alpha.operatorFailback())
        wait("the last checkpoint") { alphaActions.calls.last == "handOver" }
        XCTAssertEqual(alpha.state, .handingOver)
        beta.handoverRequested()
        wait("roles swapped and back in lock-step") {
            alpha.state == .lockstep && beta.state == .lockstep && alpha.role == .secondary
        }
        XCTAssertEqual(beta.role, .primary)
        XCTAssertEqual(alpha.report().epoch, 1)
        XCTAssertEqual(beta.report().epoch, 1)
        XCTAssertEqual(Array(alphaActions.calls.suffix(5)),
                       ["handOver", "stopReplication", "standDown", "synchronize(secondary)", "startLockstep(secondary)"])
        XCTAssertEqual(Array(betaActions.calls.suffix(4)),
                       ["stopReplication", "takeOver", "synchronize(primary)", "startLockstep(primary)"])
        XCTAssertFalse(betaActions.calls.contains("fence"), "\(betaActions.calls)")
    }

    func testPeersOfDifferentPairsOrKeysNeverConnect() throws {
        let (a, b) = ports()
        let primary = try supervisor(try configuration(host: "alpha", role: "primary", listen: a, peer: b,
                                                       witness: nil), RecordingActuator())
        defer { primary.stop() }
        // Another key on the other side: authentication fails, no lock-step.
        try "another key entirely, 32 bytes!!".write(toFile: directory + "/key", atomically: true, encoding: .utf8)
        let stranger = try PairSupervisor(configuration: try configuration(host: "beta", role: "secondary",
                                                                            listen: b, peer: a, witness: nil),
                                          key: try PeerKey(bytes: Array("another key entirely, 32 bytes!!".utf8)),
                                          stateFile: "\(directory!)/beta.state", actuator: RecordingActuator(),
                                          logger: Logger(label: "beta"))
        stranger.start()
        defer { stranger.stop() }
        usleep(1_000_000)
        XCTAssertEqual(primary.state, .waiting)
        XCTAssertEqual(stranger.state, .waiting)
    }
}

final class RecordingActuator: PairActuator, @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [String] = []
    var calls: [String] { lock.withLock { recorded } }
    private func record(_ call: String) { lock.withLock { recorded.append(call) } }

    func synchronize(as role: PairRole, session: PeerSession) -> Result<Void, SupervisionError> {
        record("synchronize(\(role.rawValue))")
        return .success(())
    }
    func startLockstep(as role: PairRole) { record("startLockstep(\(role.rawValue))") }
    func stopReplication() { record("stopReplication") }
    func takeOver() { record("takeOver") }
    func continueAlone() { record("continueAlone") }
    func fence(reason: String) { record("fence(\(reason))") }
    func handOver() -> Result<Void, SupervisionError> {
        record("handOver")
        return .success(())
    }
    func standDown() { record("standDown") }
    func resumeLockstep() { record("resumeLockstep") }
    func inbound(channel: String, fd: Int32) {
        record("inbound(\(channel))")
        close(fd)
    }
    func received(_ message: PeerMessage, on session: PeerSession) { record("received") }
}

/// A TCP relay between the two supervisors: forwards bytes both ways until
/// `cut()`, after which it silently drops them (the connections stay open,
/// as when a link fails without a reset).
final class LinkRelay: @unchecked Sendable {
    let port: UInt16
    private let target: UInt16
    private let listener: Int32
    private let lock = NSLock()
    private var isCut = false

    init(forwardingTo target: UInt16) throws {
        self.target = target
        port = TestPorts.next()
        listener = try TCPConnection.listen(on: SocketAddress(host: IPAddress("127.0.0.1")!, port: port))
        Thread.detachNewThread { [self] in
            while let client = try? TCPConnection.accept(from: listener, timeout: nil) {
                guard let server = try? TCPConnection.connect(
                    to: SocketAddress(host: IPAddress("127.0.0.1")!, port: self.target), timeout: .seconds(1)) else {
                    close(client)
                    continue
                }
                pump(from: client, to: server)
                pump(from: server, to: client)
            }
        }
    }

    func cut() { lock.withLock { isCut = true } }

    private func pump(from source: Int32, to destination: Int32) {
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(source, &buffer, buffer.count)
                if count <= 0 { break }
                if lock.withLock({ isCut }) { continue }
                _ = buffer.withUnsafeBytes { send(destination, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
            }
            shutdown(destination, Int32(SHUT_WR))
        }
    }
}

/// Distinct loopback ports for every listener of this test process (random
/// ports could collide with a listener an earlier test left running).
enum TestPorts {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var port = UInt16.random(in: 20000...50000)

    static func next() -> UInt16 {
        lock.withLock {
            port += 2
            return port
        }
    }
}
