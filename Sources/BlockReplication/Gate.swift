import Glibc

/// Many holders at once (`shared`) or one alone (`exclusive`); a waiting
/// exclusive holder blocks new shared ones, so a switch (resync's last
/// step, a failover, a checkpoint's drain) is never starved by a steady
/// stream of guest writes, and waits only for those already in flight.
final class Gate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var holders = 0
    private var exclusiveHeld = false
    private var exclusiveWaiting = 0

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        changed.deallocate()
    }

    func shared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        while exclusiveHeld || exclusiveWaiting > 0 { pthread_cond_wait(changed, mutex) }
        holders += 1
        pthread_mutex_unlock(mutex)
        defer {
            pthread_mutex_lock(mutex)
            holders -= 1
            if holders == 0 { pthread_cond_broadcast(changed) }
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }

    func exclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        exclusiveWaiting += 1
        while exclusiveHeld || holders > 0 { pthread_cond_wait(changed, mutex) }
        exclusiveWaiting -= 1
        exclusiveHeld = true
        pthread_mutex_unlock(mutex)
        defer {
            pthread_mutex_lock(mutex)
            exclusiveHeld = false
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }
}
