import ColoProtocol
import Glibc
import Synchronization

/// What the control threads ask the datapath thread to do.
enum DatapathCommand: Sendable {
    case checkpointDone
    case passThrough
    /// The guest's frame socket from now on (the old one is closed).
    case replaceGuest(Int32)
    /// Start capturing mismatches to this fd, or stop (nil).
    case capture(Int32?)
    /// Nothing but the counters.
    case counters
    /// Stop for a new attach (resync): accepted in pass-through or once the
    /// peer link failed, refused while comparing or following a live link.
    /// The thread then ends its turn (flushing what it queued) and closes
    /// its fds.
    case detach
}

/// Hands commands from control threads to the datapath thread and waits for
/// each one's answer. The datapath polls `wakeFd`; a control thread waits at
/// most `timeout` (a stuck datapath must not hold supervisord forever).
final class Mailbox: Sendable {
    typealias Answer = Result<ColoProxyCounters, CommandError>

    struct CommandError: Error {
        let code: ColoErrorCode
        let message: String
    }

    private final class Pending: @unchecked Sendable {
        let command: DatapathCommand
        private var answer: Answer?
        private var mutex = pthread_mutex_t()
        private var condition = pthread_cond_t()

        init(_ command: DatapathCommand) {
            self.command = command
            pthread_mutex_init(&mutex, nil)
            var attributes = pthread_condattr_t()
            pthread_condattr_init(&attributes)
            pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
            pthread_cond_init(&condition, &attributes)
            pthread_condattr_destroy(&attributes)
        }

        deinit {
            pthread_cond_destroy(&condition)
            pthread_mutex_destroy(&mutex)
        }

        func complete(_ result: Answer) {
            pthread_mutex_lock(&mutex)
            answer = result
            pthread_cond_signal(&condition)
            pthread_mutex_unlock(&mutex)
        }

        func wait(seconds: Int) -> Answer? {
            var deadline = timespec()
            clock_gettime(CLOCK_MONOTONIC, &deadline)
            deadline.tv_sec += seconds
            pthread_mutex_lock(&mutex)
            defer { pthread_mutex_unlock(&mutex) }
            while answer == nil {
                if pthread_cond_timedwait(&condition, &mutex, &deadline) == ETIMEDOUT { break }
            }
            return answer
        }
    }

    let wakeFd: Int32
    private let signalFd: Int32
    private let queue = Mutex<(pending: [Pending], closed: Bool)>(([], false))

    init() {
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0, "pipe: \(errno)")
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        }
        wakeFd = fds[0]
        signalFd = fds[1]
    }

    deinit {
        Glibc.close(wakeFd)
        Glibc.close(signalFd)
    }

    /// Sends a command and waits for the datapath's answer.
    func call(_ command: DatapathCommand, timeoutSeconds: Int = 5) -> Answer {
        let pending = Pending(command)
        let accepted = queue.withLock { state in
            guard !state.closed else { return false }
            state.pending.append(pending)
            return true
        }
        guard accepted else { return .failure(CommandError(code: .failedPrecondition, message: "the datapath has stopped")) }
        var byte: UInt8 = 1
        _ = write(signalFd, &byte, 1)
        return pending.wait(seconds: timeoutSeconds)
            ?? .failure(CommandError(code: .timeout, message: "the datapath did not answer within \(timeoutSeconds) s"))
    }

    /// On the datapath thread: takes the waiting commands; `answer` gives each its reply.
    func serve(_ answer: (DatapathCommand) -> Answer) {
        var drain = [UInt8](repeating: 0, count: 64)
        while read(wakeFd, &drain, drain.count) > 0 {}
        let pending = queue.withLock { state in
            defer { state.pending.removeAll() }
            return state.pending
        }
        for item in pending { item.complete(answer(item.command)) }
    }

    /// No more commands will be served; waiting ones fail.
    func close() {
        let pending = queue.withLock { state in
            state.closed = true
            defer { state.pending.removeAll() }
            return state.pending
        }
        for item in pending {
            item.complete(.failure(CommandError(code: .failedPrecondition, message: "the datapath has stopped")))
        }
    }
}
