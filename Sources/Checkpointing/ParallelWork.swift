internal import CSupport
import Glibc

/// Runs `body(0..<threads)` on that many threads (index 0 on the caller's)
/// and returns when all are done: the commit's cache -> RAM copy and the
/// verify hashes spread over the CPUs this way. Plain pthreads, joined:
/// daemons do not use Swift concurrency.
func runInParallel(threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Job: @unchecked Sendable {
        let index: Int
        let body: @Sendable (Int) -> Void
        init(index: Int, body: @escaping @Sendable (Int) -> Void) {
            self.index = index
            self.body = body
        }
    }
    guard threads > 1 else {
        body(0)
        return
    }
    var started: [pthread_t] = []
    for index in 1..<threads {
        let job = Unmanaged.passRetained(Job(index: index, body: body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            let job = Unmanaged<Job>.fromOpaque(argument!).takeRetainedValue()
            job.body(job.index)
            return nil
        }, job)
        if result == 0 {
            started.append(thread)
        } else {
            // No thread to spare: do its share here.
            Unmanaged<Job>.fromOpaque(job).release()
            body(index)
        }
    }
    body(0)
    for thread in started { pthread_join(thread, nil) }
}

/// CPUs this process may run on (sched_getaffinity: no /proc or /sys read,
/// which the sandbox refuses).
public func availableCPUs() -> Int {
    max(1, Int(colo_available_cpus()))
}
