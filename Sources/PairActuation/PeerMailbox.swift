import Durations
import ColoProtocol
import ControlSocket
import Glibc
import PairSupervision

/// What arrives from the peer for the replication to take in its own time:
/// data connections by channel name, and step messages. Waits are bounded:
/// a peer that never sends must not hold a host (DESIGN.md section 4).
/// A waiter sleeps until something is delivered (no polling: on a machine
/// whose cores run the guests, every wake-up is taken from them).
final class PeerMailbox: Sendable {
    private struct Contents {
        var connections: [String: [Int32]] = [:]
        /// Requests with the session they came on: a request from an
        /// earlier link belongs to a sync that is over.
        var requests: [(PeerStepRequest, ObjectIdentifier)] = []
        var answers: [UInt64: PeerStepDone] = [:]
    }
    private let contents = Monitor(Contents())

    func deliver(connection fd: Int32, channel: String) {
        contents.withLock(notify: true) { $0.connections[channel, default: []].append(fd) }
    }

    func deliver(_ request: PeerStepRequest, on session: ObjectIdentifier) {
        contents.withLock(notify: true) { $0.requests.append((request, session)) }
    }

    func deliver(_ answer: PeerStepDone) {
        contents.withLock(notify: true) { $0.answers[answer.sequence] = answer }
    }

    /// The connection the peer dialled for `channel`.
    func connection(_ channel: String, timeout: Duration) throws(ActuationError) -> Int32 {
        try wait("the peer's \(channel) connection", timeout: timeout) { contents in
            guard var queue = contents.connections[channel], !queue.isEmpty else { return nil }
            let fd = queue.removeFirst()
            contents.connections[channel] = queue
            return fd
        }
    }

    /// The next step the primary asks for on `session`; requests that came
    /// on older links are dropped.
    func request(on session: ObjectIdentifier, timeout: Duration) throws(ActuationError) -> PeerStepRequest {
        try wait("the primary's next step", timeout: timeout) { contents in
            contents.requests.removeAll { $0.1 != session }
            return contents.requests.isEmpty ? nil : contents.requests.removeFirst().0
        }
    }

    /// The secondary's answer to step `sequence`.
    func answer(to sequence: UInt64, timeout: Duration) throws(ActuationError) -> PeerStepDone {
        try wait("the secondary's answer to step \(sequence)", timeout: timeout) { contents in
            contents.answers.removeValue(forKey: sequence)
        }
    }

    /// Forgets the connections and answers of an earlier attempt, closing
    /// connections nobody took, before a new sync asks for fresh ones.
    func clearStale() {
        let stale = contents.withLock { contents -> [Int32] in
            defer { contents.connections = [:]; contents.answers = [:] }
            return contents.connections.values.flatMap { $0 }
        }
        stale.forEach { close($0) }
    }

    private func wait<T>(_ what: String, timeout: Duration,
                         _ take: (inout Contents) -> T?) throws(ActuationError) -> T {
        let deadline = monotonicNanoseconds() + UInt64(max(0, timeout.microseconds)) * 1000
        guard let value = contents.wait(deadline: deadline, until: take) else { throw .timedOut(what) }
        return value
    }
}
