internal import CSupport
import Glibc
import SystemPackage

/// Runs `body` on a new detached OS thread.
///
/// Control sockets block in poll/recvmsg; doing that on Swift concurrency's
/// small cooperative pool would starve every other task, so readers get
/// threads of their own.
public func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
    let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        // Linux thread names are at most 15 bytes.
        colo_set_thread_name(String(box.name.prefix(15)))
        box.body()
        return nil
    }, box)
    precondition(result == 0, "pthread_create failed: \(result)")
    pthread_detach(thread)
}

/// A pipe whose read end becomes readable, and stays readable, once
/// `signal()` is called: a way to wake every thread blocked in poll at once
/// (how a server stops all its connection threads).
public final class WakeupPipe: Sendable {
    public let readEnd: FileDescriptor
    private let writeEnd: FileDescriptor

    public init() throws(ControlSocketError) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw .system(operation: "pipe", errno: Errno(rawValue: errno)) }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        }
        readEnd = FileDescriptor(rawValue: fds[0])
        writeEnd = FileDescriptor(rawValue: fds[1])
    }

    deinit {
        try? readEnd.close()
        try? writeEnd.close()
    }

    /// Makes the read end readable. Never blocks: a full pipe is readable
    /// already.
    public func signal() {
        var byte: UInt8 = 1
        _ = write(writeEnd.rawValue, &byte, 1)
    }

}

/// A plain mutex (glibc's: a waiter sleeps on a futex and the unlocking
/// thread just wakes it) for sections that may block or run long, such
/// as holding a socket's turn to read across a blocking `recv`.
/// Synchronization's `Mutex` on Linux is a priority-inheritance futex:
/// every contended unlock enters the kernel to hand the lock over, which
/// made a lock passed around with each request several times slower.
/// Bodies may throw typed errors and return non-Sendable values.
public final class ThreadLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// For a hold that ends somewhere a closure cannot show; pair with `unlock`.
    public func lock() {
        pthread_mutex_lock(mutex)
    }

    public func unlock() {
        pthread_mutex_unlock(mutex)
    }
}

/// State shared between threads, guarded by one mutex, with a condition
/// variable for waiting on it: the daemons run on threads they own (no
/// Swift concurrency), and the standard library's Mutex cannot wait.
/// A change that a waiter may be waiting for wakes them all (`notify`);
/// counters updated per batch do not, so a thread waiting for the end of a
/// checkpoint is not woken hundreds of times on the way.
public final class Monitor<State>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    public init(_ state: State) {
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

    public func withLock<R, E: Error>(notify: Bool = false, _ body: (inout State) throws(E) -> R) throws(E) -> R {
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
    public func wait<R>(deadline: UInt64?, until ready: (inout State) -> R?) -> R? {
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

/// Monotonic nanoseconds (CLOCK_MONOTONIC, the clock of `Monitor`'s deadlines).
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
