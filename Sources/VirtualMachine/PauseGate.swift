import ControlSocket
import Durations
import Synchronization

/// Where paused vCPU threads wait. The pausing thread raises the gate and
/// kicks every vCPU out of KVM_RUN; each vCPU thread, once its last exit is
/// complete, parks here until the gate is lowered (or its VM stops), so
/// "paused" means every vCPU is out of KVM with its state consistent.
final class PauseGate: Sendable {
    private let raised = Atomic<Bool>(false)
    /// How many vCPU threads are parked.
    private let parked = Monitor(0)

    /// vCPU threads check this after every exit (cheap: one atomic load).
    var isRaised: Bool { raised.load(ordering: .acquiring) }

    func raise() {
        parked.withLock { _ in raised.store(true, ordering: .releasing) }
    }

    /// Releases every parked vCPU.
    func lower() {
        parked.withLock(notify: true) { _ in raised.store(false, ordering: .releasing) }
    }

    /// Wakes parked threads to look at `leave` again (their VM is stopping).
    func wake() {
        parked.withLock(notify: true) { _ in }
    }

    /// On a vCPU thread: waits while the gate is raised and `leave` is false.
    func park(leave: () -> Bool) {
        parked.withLock(notify: true) { $0 += 1 }
        parked.wait(deadline: nil) { count -> Void? in
            guard !raised.load(ordering: .acquiring) || leave() else { return nil }
            count -= 1
            return ()
        }
    }

    /// Waits until `count` threads are parked; false after `timeout`.
    func waitUntilParked(_ count: Int, timeout: Duration) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(clamping: timeout.nanoseconds)
        return parked.wait(deadline: deadline) { parked in parked >= count ? true : nil } ?? false
    }
}
