import Glibc

/// State shared between threads, guarded by one mutex, with a condition
/// variable for waiting on it: the daemons run on threads they own (no
/// Swift concurrency), and the standard library's Mutex cannot wait.
/// A change that a waiter may be waiting for wakes them all (`notify`);
/// counters updated per batch do not, so a thread waiting for the end of a
/// checkpoint is not woken hundreds of times on the way.
final class Monitor<State>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    init(_ state: State) {
        self.state = state
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    func withLock<R, E: Error>(notify: Bool = false, _ body: (inout State) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer {
            if notify { pthread_cond_broadcast(condition) }
            pthread_mutex_unlock(mutex)
        }
        return try body(&state)
    }

    /// Waits until `ready` returns a value (it runs under the lock, and may
    /// change the state: waiters are woken after it), or until `deadline`
    /// (monotonic nanoseconds) passes: then nil.
    func wait<R>(deadline: UInt64?, until ready: (inout State) -> R?) -> R? {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        while true {
            if let result = ready(&state) { return result }
            if let deadline {
                let now = monotonicNanoseconds()
                if now >= deadline { return nil }
                var until = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                pthread_cond_timedwait(condition, mutex, &until)
            } else {
                pthread_cond_wait(condition, mutex)
            }
        }
    }
}

/// Monotonic nanoseconds (CLOCK_MONOTONIC, as the monitor's waits use).
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

extension Duration {
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds / 1_000_000_000))
    }
}
