import Devices
import Glibc
import KVM
import Synchronization

/// Where paused vCPU threads wait. The pausing thread raises the gate and
/// kicks every vCPU out of KVM_RUN; each vCPU thread, once its last exit is
/// complete, parks here until the gate is lowered (or its VM stops), so
/// "paused" means every vCPU is out of KVM with its state consistent.
final class PauseGate: @unchecked Sendable {
    private let raised = Atomic<Bool>(false)
    private var parked = 0
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// vCPU threads check this after every exit (cheap: one atomic load).
    var isRaised: Bool { raised.load(ordering: .acquiring) }

    func raise() {
        locked { raised.store(true, ordering: .releasing) }
    }

    /// Releases every parked vCPU.
    func lower() {
        locked {
            raised.store(false, ordering: .releasing)
            pthread_cond_broadcast(condition)
        }
    }

    /// Wakes parked threads to look at `leave` again (their VM is stopping).
    func wake() {
        _ = locked { pthread_cond_broadcast(condition) }
    }

    /// On a vCPU thread: waits while the gate is raised and `leave` is false.
    func park(leave: () -> Bool) {
        locked {
            parked += 1
            pthread_cond_broadcast(condition)
            while raised.load(ordering: .acquiring) && !leave() {
                pthread_cond_wait(condition, mutex)
            }
            parked -= 1
        }
    }

    /// Waits until `count` threads are parked; false after `timeout`.
    func waitUntilParked(_ count: Int, timeout: Duration) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Int(deadline.tv_nsec) + Int(attoseconds / 1_000_000_000)
        deadline.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        return locked {
            while parked < count {
                if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT { return parked >= count }
            }
            return true
        }
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
}
