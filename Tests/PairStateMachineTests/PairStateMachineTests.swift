import Foundation
import PairStateMachine
import XCTest

final class PairStateMachineTests: XCTestCase {
    private func lockstep(_ role: PairRole, epoch: UInt64 = 0) -> PairStateMachine {
        var machine = PairStateMachine(role: role, epoch: epoch)
        _ = machine.handle(.peerConnected(peerEpoch: epoch))
        _ = machine.handle(.syncCompleted)
        XCTAssertEqual(machine.state, .lockstep)
        return machine
    }

    func testALocalDaemonLostFencesAndResignsSoThePeerTakesOver() {
        var machine = lockstep(.primary, epoch: 2)
        XCTAssertEqual(machine.handle(.localFailure("vmmd is gone")),
                       [.stopReplication, .persist, .fence(reason: "vmmd is gone"), .resign])
        XCTAssertEqual(machine.state, .fenced)
        XCTAssertEqual(machine.handle(.localFailure("again")), [], "a fenced host has nothing left to resign")
        var alone = PairStateMachine(restoring: .primary, state: .alone, epoch: 3)
        XCTAssertEqual(alone.handle(.localFailure("blockd is gone")).last, .resign)
    }

    func testStartUpSyncsThenRunsInLockstep() {
        var machine = PairStateMachine(role: .primary)
        XCTAssertEqual(machine.handle(.peerConnected(peerEpoch: 3)), [.persist, .startSync])
        XCTAssertEqual(machine.epoch, 3, "a host that was away adopts the pair's newer epoch")
        XCTAssertEqual(machine.handle(.syncCompleted), [.persist, .startLockstep])
        XCTAssertEqual(machine.state, .lockstep)
    }

    func testSecondaryTakesOverOnlyWithTheWitnessGrant() {
        var machine = lockstep(.secondary, epoch: 4)
        XCTAssertEqual(machine.handle(.peerLost),
                       [.stopReplication, .persist, .claimFromWitness(epoch: 5, reason: .heartbeatLost)])
        XCTAssertEqual(machine.state, .claiming)
        XCTAssertEqual(machine.role, .secondary, "no role change before the grant")
        // A grant for another epoch (a stale answer) changes nothing.
        XCTAssertEqual(machine.handle(.witnessGranted(epoch: 4)), [])
        XCTAssertEqual(machine.handle(.witnessGranted(epoch: 5)), [.persist, .takeOver])
        XCTAssertEqual(machine.state, .alone)
        XCTAssertEqual(machine.role, .primary)
        XCTAssertEqual(machine.epoch, 5)
    }

    func testPrimaryLosingItsSecondaryContinuesAloneWithTheGrant() {
        var machine = lockstep(.primary)
        _ = machine.handle(.peerLost)
        XCTAssertEqual(machine.handle(.witnessGranted(epoch: 1)), [.persist, .continueAlone])
        XCTAssertEqual(machine.role, .primary)
    }

    func testRefusedOrUnreachableWitnessFences() {
        for role in [PairRole.primary, .secondary] {
            var machine = lockstep(role)
            _ = machine.handle(.peerLost)
            XCTAssertEqual(machine.handle(.witnessRefused("granted to beta")),
                           [.persist, .fence(reason: "granted to beta")])
            XCTAssertEqual(machine.state, .fenced)
            // Fenced is final until an operator intervenes.
            XCTAssertEqual(machine.handle(.witnessGranted(epoch: 1)), [])
            XCTAssertEqual(machine.handle(.operatorResync), [])
        }
    }

    func testResyncBringsASurvivorBackToLockstep() {
        var machine = lockstep(.secondary)
        _ = machine.handle(.operatorFailover)
        _ = machine.handle(.witnessGranted(epoch: 1))
        XCTAssertEqual(machine.handle(.operatorResync), [.persist, .startSync])
        XCTAssertEqual(machine.state, .resyncing)
        XCTAssertEqual(machine.handle(.peerLost), [.stopReplication, .persist])
        XCTAssertEqual(machine.state, .alone, "a failed resync leaves the survivor running")
        _ = machine.handle(.operatorResync)
        XCTAssertEqual(machine.handle(.syncCompleted), [.persist, .startLockstep])
        // And a second failover works too.
        XCTAssertEqual(machine.handle(.peerLost),
                       [.stopReplication, .persist, .claimFromWitness(epoch: 2, reason: .heartbeatLost)])
    }

    /// Failback: the primary hands over at a checkpoint, the secondary
    /// claims the pair from the witness, takes over, and the old primary
    /// comes back as its secondary through a resync nobody has to start.
    func testFailbackSwapsRolesThroughAHandover() {
        var primary = lockstep(.primary, epoch: 4)
        var secondary = lockstep(.secondary, epoch: 4)
        XCTAssertEqual(secondary.handle(.operatorFailback), [], "the primary leads a failback")
        XCTAssertEqual(primary.handle(.operatorFailback), [.persist, .handOver])
        XCTAssertEqual(primary.state, .handingOver)

        XCTAssertEqual(secondary.handle(.handoverRequested),
                       [.stopReplication, .persist, .claimFromWitness(epoch: 5, reason: .handover)])
        XCTAssertEqual(secondary.handle(.witnessGranted(epoch: 5)),
                       [.persist, .acceptHandover(epoch: 5), .takeOver])
        XCTAssertEqual(secondary.role, .primary)
        XCTAssertEqual(secondary.state, .alone)

        XCTAssertEqual(primary.handle(.handoverAccepted(epoch: 5)), [.stopReplication, .persist, .standDown])
        XCTAssertEqual(primary.role, .secondary)
        XCTAssertEqual(primary.state, .waiting)
        XCTAssertEqual(primary.epoch, 5)

        // The old primary connects as a fresh secondary: both sync.
        XCTAssertEqual(secondary.handle(.peerConnected(peerEpoch: 5)), [.persist, .startSync])
        XCTAssertEqual(secondary.state, .resyncing)
        XCTAssertEqual(primary.handle(.peerConnected(peerEpoch: 5)), [.persist, .startSync])
        XCTAssertEqual(secondary.handle(.syncCompleted), [.persist, .startLockstep])
        // Only that once: a later lost partner waits for an operator's resync.
        _ = secondary.handle(.peerLost)
        _ = secondary.handle(.witnessGranted(epoch: 6))
        XCTAssertEqual(secondary.state, .alone)
        XCTAssertEqual(secondary.handle(.peerConnected(peerEpoch: 6)), [])
    }

    func testAFailbackTheWitnessRefusesLeavesThePairAsItWas() {
        var primary = lockstep(.primary, epoch: 1)
        var secondary = lockstep(.secondary, epoch: 1)
        _ = primary.handle(.operatorFailback)
        _ = secondary.handle(.handoverRequested)
        XCTAssertEqual(secondary.handle(.witnessRefused("the witness could not be asked")),
                       [.persist, .declineHandover("the witness could not be asked"), .startLockstep])
        XCTAssertEqual(secondary.state, .lockstep)
        XCTAssertEqual(secondary.role, .secondary)
        XCTAssertEqual(secondary.epoch, 1)
        XCTAssertEqual(primary.handle(.handoverDeclined("the witness could not be asked")),
                       [.persist, .resumeLockstep("the witness could not be asked")])
        XCTAssertEqual(primary.state, .lockstep)
        XCTAssertEqual(primary.role, .primary)
    }

    func testAPrimaryWhoseSecondaryVanishesDuringAHandoverCarriesOnAlone() {
        var primary = lockstep(.primary, epoch: 1)
        _ = primary.handle(.operatorFailback)
        XCTAssertEqual(primary.handle(.peerLost),
                       [.stopReplication, .persist, .claimFromWitness(epoch: 2, reason: .heartbeatLost)])
        XCTAssertEqual(primary.handle(.witnessGranted(epoch: 2)), [.persist, .continueAlone])
        XCTAssertEqual(primary.role, .primary)
        // A stale acceptance (an older epoch) changes nothing.
        var other = lockstep(.primary, epoch: 3)
        _ = other.handle(.operatorFailback)
        XCTAssertEqual(other.handle(.handoverAccepted(epoch: 3)), [])
        XCTAssertEqual(other.state, .handingOver)
    }

    func testEventsThatDoNotApplyChangeNothing() {
        var machine = PairStateMachine(role: .primary)
        let before = machine
        for event: PairStateMachine.Event in [.syncCompleted, .peerLost, .operatorFailover, .operatorResync,
                                              .witnessGranted(epoch: 1), .witnessRefused("x"), .operatorFailback,
                                              .handoverRequested, .handoverAccepted(epoch: 1),
                                              .handoverDeclined("x")] {
            XCTAssertEqual(machine.handle(event), [], "\(event)")
            XCTAssertEqual(machine, before)
        }
    }

    /// supervisord restarts with its daemons: only a host that was serving
    /// alone (or never had a secondary) boots its guest again; the others
    /// return as fresh secondaries for the holder of the pair to resync.
    func testARestartKeepsTheServingHostAndMakesTheOthersFreshSecondaries() {
        let cases: [(PairRole, PairState, PairRole, PairState)] = [
            (.primary, .alone, .primary, .alone),
            (.primary, .resyncing, .primary, .alone),
            (.primary, .waiting, .primary, .waiting),
            (.primary, .syncing, .primary, .waiting),
            (.primary, .lockstep, .secondary, .waiting),
            (.primary, .claiming, .secondary, .waiting),
            (.primary, .handingOver, .secondary, .waiting),
            (.primary, .fenced, .secondary, .waiting),
            (.secondary, .lockstep, .secondary, .waiting),
            (.secondary, .claiming, .secondary, .waiting),
            (.secondary, .fenced, .secondary, .waiting),
        ]
        for (role, state, expectedRole, expectedState) in cases {
            let machine = PairStateMachine(restoring: role, state: state, epoch: 7)
            XCTAssertEqual(machine.role, expectedRole, "\(role) \(state)")
            XCTAssertEqual(machine.state, expectedState, "\(role) \(state)")
            XCTAssertEqual(machine.epoch, 7)
        }
    }

    /// The state survives a restart of supervisord as JSON.
    func testStateRoundTripsThroughItsPersistedForm() throws {
        var machine = lockstep(.secondary, epoch: 7)
        _ = machine.handle(.peerLost)
        let encoded = try JSONEncoder().encode(machine)
        XCTAssertEqual(try JSONDecoder().decode(PairStateMachine.self, from: encoded), machine)
    }
}
