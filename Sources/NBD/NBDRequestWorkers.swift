import ControlSocket
import Dispatch
import Synchronization

/// A request of one connection, read off the socket and waiting for a
/// worker. `payload` is a WRITE's data (the job owns it).
struct NBDJob: @unchecked Sendable {
    let command: NBDCommand
    let request: NBDRequest
    let payload: UnsafeMutableRawBufferPointer?
}

/// The threads that serve one connection's requests while its reader
/// takes in the next ones: several requests in flight per client, each
/// answered when it is done (out of order, as NBD allows; the socket
/// serialises whole replies).
final class NBDRequestWorkers: Sendable {
    private struct Queue {
        var jobs: [NBDJob] = []
        var head = 0
    }
    private let queue = Mutex(Queue())
    private let available = DispatchSemaphore(value: 0)
    /// Requests read and not yet answered, at most `inFlight`: a client
    /// that pipelines faster than the disk cannot make the reader buffer
    /// without bound.
    private let slots: DispatchSemaphore
    private let finished = DispatchGroup()
    private let count: Int

    private let serve: @Sendable (NBDJob) -> Void

    init(count: Int, inFlight: Int, name: String, serve: @escaping @Sendable (NBDJob) -> Void) {
        self.count = count
        self.serve = serve
        slots = DispatchSemaphore(value: inFlight)
        for index in 0..<count {
            finished.enter()
            spawnThread(name: "\(name)-\(index)") { [self] in
                while let job = take() {
                    serve(job)
                    slots.signal()
                }
                finished.leave()
            }
        }
    }

    /// Waits for room for one more request (before its payload is read).
    func reserve() {
        slots.wait()
    }

    /// Gives back a reservation whose request never came whole (the client
    /// vanished mid-payload). Every reservation must end in a serve or
    /// here: libdispatch traps when a semaphore is freed below its
    /// initial value.
    func cancelReservation() {
        slots.signal()
    }

    /// Serves a request on the calling thread; `reserve` made room for it.
    func serveHere(_ job: NBDJob) {
        serve(job)
        slots.signal()
    }

    /// Hands a request to the workers; `reserve` made room for it.
    func submit(_ job: NBDJob) {
        queue.withLock { $0.jobs.append(job) }
        available.signal()
    }

    private func take() -> NBDJob? {
        available.wait()
        return queue.withLock { queue -> NBDJob? in
            guard queue.head < queue.jobs.count else { return nil }
            let job = queue.jobs[queue.head]
            queue.head += 1
            if queue.head == queue.jobs.count {
                queue.jobs.removeAll(keepingCapacity: true)
                queue.head = 0
            }
            return job
        }
    }

    /// Lets the workers finish what was submitted, then waits for them
    /// (NBD_CMD_DISC: every request in flight is answered first). A worker
    /// stops when it wakes to an empty queue: each submit's wake-up finds
    /// a job, so only these extra wake-ups do.
    func finish() {
        for _ in 0..<count { available.signal() }
        finished.wait()
    }
}
