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
