import ColoProtocol
import Foundation
import Glibc
import Logging
import PairConfiguration
import PeerAuthentication
import PeerLink
@testable import Witness
import XCTest

final class WitnessRegistryTests: XCTestCase {
    func testEachEpochIsGrantedToOneHostOnly() {
        var registry = WitnessRegistry()
        XCTAssertEqual(registry.claim(pair: "demo", host: "alpha", epoch: 1), .granted)
        // The other side of a cut link claims the same epoch: refused.
        guard case .refused(let holder, let reason) = registry.claim(pair: "demo", host: "beta", epoch: 1) else {
            return XCTFail("granted twice")
        }
        XCTAssertEqual(holder, .init(host: "alpha", epoch: 1))
        XCTAssertTrue(reason.contains("already granted to alpha"))
        // The holder may repeat its claim (a retry after a lost answer).
        XCTAssertEqual(registry.claim(pair: "demo", host: "alpha", epoch: 1), .granted)
        // An old epoch never wins again; a newer one does.
        guard case .refused = registry.claim(pair: "demo", host: "alpha", epoch: 0) else { return XCTFail() }
        XCTAssertEqual(registry.claim(pair: "demo", host: "beta", epoch: 2), .granted)
        // Pairs are independent.
        XCTAssertEqual(registry.claim(pair: "other", host: "beta", epoch: 1), .granted)
    }

    func testStateFileFormRoundTripsAndRejectsDamage() throws {
        var registry = WitnessRegistry()
        _ = registry.claim(pair: "demo", host: "alpha", epoch: 3)
        _ = registry.claim(pair: "web", host: "beta", epoch: 9)
        XCTAssertEqual(try WitnessRegistry(serialized: registry.serialized), registry)
        XCTAssertThrowsError(try WitnessRegistry(serialized: "demo three alpha\n"))
        XCTAssertThrowsError(try WitnessRegistry(serialized: "demo 3\n"))
    }
}

final class WitnessServiceTests: XCTestCase {
    private let key = try! PeerKey(bytes: Array("the witness shares this 32B key!".utf8))

    private func startWitness(stateFile: String?) throws -> (SocketAddress, WitnessService) {
        let address = SocketAddress(host: IPAddress("127.0.0.1")!, port: UInt16.random(in: 20000...40000))
        let listener = try TCPConnection.listen(on: address)
        let service = try WitnessService(listener: listener, key: key, stateFile: stateFile,
                                         logger: Logger(label: "witness-test"))
        Thread.detachNewThread { service.run() }
        return (address, service)
    }

    private func claim(_ host: String, epoch: UInt64) -> WitnessClaim {
        var claim = WitnessClaim()
        claim.pair = "demo"
        claim.host = host
        claim.epoch = epoch
        return claim
    }

    func testClaimsOverTheNetworkAndGrantsSurviveARestart() throws {
        let stateFile = NSTemporaryDirectory() + "witness-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).state"
        defer { unlink(stateFile) }
        let (address, _) = try startWitness(stateFile: stateFile)
        let first = try WitnessClient.claim(claim("alpha", epoch: 1), at: address, key: key, timeout: .seconds(5))
        XCTAssertTrue(first.granted)
        let second = try WitnessClient.claim(claim("beta", epoch: 1), at: address, key: key, timeout: .seconds(5))
        XCTAssertFalse(second.granted)
        XCTAssertEqual(second.holder, "alpha")
        XCTAssertEqual(try String(contentsOfFile: stateFile, encoding: .utf8), "demo 1 alpha\n")

        // A new witness process reading the same state refuses beta too.
        let (restarted, _) = try startWitness(stateFile: stateFile)
        XCTAssertFalse(try WitnessClient.claim(claim("beta", epoch: 1), at: restarted, key: key,
                                               timeout: .seconds(5)).granted)
    }

    func testAClaimWithTheWrongKeyGetsNoVerdict() throws {
        let (address, _) = try startWitness(stateFile: nil)
        let wrong = try PeerKey(bytes: Array("not the witness's key, 32 bytes.".utf8))
        XCTAssertThrowsError(try WitnessClient.claim(claim("mallory", epoch: 1), at: address, key: wrong,
                                                     timeout: .seconds(5)))
        // Nothing was granted to mallory: alpha gets epoch 1.
        XCTAssertTrue(try WitnessClient.claim(claim("alpha", epoch: 1), at: address, key: key,
                                              timeout: .seconds(5)).granted)
    }

    func testAnUnreachableWitnessIsAnErrorInTime() {
        let nowhere = SocketAddress(host: IPAddress("127.0.0.1")!, port: 9)
        let started = ContinuousClock.now
        XCTAssertThrowsError(try WitnessClient.claim(claim("alpha", epoch: 1), at: nowhere, key: key,
                                                     timeout: .milliseconds(500)))
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(2))
    }
}
