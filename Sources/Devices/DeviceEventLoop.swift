internal import CSupport
import ControlSocket
import Glibc
import SystemPackage

/// Something the device thread waits on: an fd and the poll events wanted
/// on it right now (none: not watched this round).
public struct PollInterest: Sendable {
    public var fd: FileDescriptor
    public var events: Int16

    public init(fd: FileDescriptor, events: Int16) {
        self.fd = fd
        self.events = events
    }
}

/// A part of a device model that reacts to fds becoming ready: a backend
/// socket, a notification eventfd.
public protocol EventSource: AnyObject, Sendable {
    /// What to watch now. Asked before every wait, so a device changes what
    /// it waits for (for example a full receive queue stops reading its
    /// socket) by changing its state and waking the loop.
    func interests() -> [PollInterest]
    /// `fd` reported `revents`.
    func ready(fd: FileDescriptor, revents: Int16)
}

/// The device thread: one poll loop over every device's backend fds, on a
/// thread of its own, so backend traffic (received frames, block
/// completions) never waits for a vCPU and a vCPU never blocks on a
/// backend.
public final class DeviceEventLoop: @unchecked Sendable {
    private let lock = ThreadLock()
    private var sources: [any EventSource] = []
    private var stopping = false
    private let wakeFD: FileDescriptor
    private let finished = DeviceSemaphore()

    public init() throws(Errno) {
        let raw = colo_eventfd()
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        wakeFD = FileDescriptor(rawValue: raw)
    }

    deinit {
        try? wakeFD.close()
    }

    public func add(_ source: any EventSource) {
        lock.withLock { sources.append(source) }
        wake()
    }

    public func remove(_ source: any EventSource) {
        lock.withLock { sources.removeAll { $0 === source } }
        wake()
    }

    /// Makes the loop ask every source for its interests again.
    public func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD.rawValue, &one, 8)
    }

    /// Runs the loop on a new thread named `name`.
    public func start(name: String) {
        spawnThread(name: name) { [self] in
            run()
            finished.signal()
        }
    }

    /// Ends the loop, waits for its thread to finish and lets go of the
    /// sources: a source's wake-up closure holds the loop, so keeping them
    /// would keep a stopped VM's devices, RAM and fds alive for good.
    public func stop() {
        lock.withLock { stopping = true }
        wake()
        finished.wait()
        lock.withLock { sources.removeAll() }
    }

    private func run() {
        while true {
            let (current, stop) = lock.withLock { (sources, stopping) }
            if stop { return }
            var owners: [(any EventSource)?] = [nil]
            var entries = [pollfd(fd: wakeFD.rawValue, events: Int16(POLLIN), revents: 0)]
            for source in current {
                for interest in source.interests() where interest.events != 0 {
                    entries.append(pollfd(fd: interest.fd.rawValue, events: interest.events, revents: 0))
                    owners.append(source)
                }
            }
            let count = poll(&entries, nfds_t(entries.count), -1)
            if count < 0 {
                if errno == EINTR { continue }
                // Only EFAULT/EINVAL/ENOMEM remain: nothing a retry fixes soon.
                usleep(10_000)
                continue
            }
            if entries[0].revents != 0 {
                var value: UInt64 = 0
                _ = Glibc.read(wakeFD.rawValue, &value, 8)
            }
            for index in 1..<entries.count where entries[index].revents != 0 {
                owners[index]?.ready(fd: FileDescriptor(rawValue: entries[index].fd), revents: entries[index].revents)
            }
        }
    }
}

/// A counting semaphore on a pthread condition (no libdispatch: daemons
/// run on threads they own).
public final class DeviceSemaphore: @unchecked Sendable {
    private var count = 0
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        condition = .allocate(capacity: 1)
        pthread_cond_init(condition, nil)
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func signal() {
        pthread_mutex_lock(mutex)
        count += 1
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    public func wait() {
        pthread_mutex_lock(mutex)
        while count == 0 { pthread_cond_wait(condition, mutex) }
        count -= 1
        pthread_mutex_unlock(mutex)
    }
}
