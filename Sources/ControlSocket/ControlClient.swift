import Durations
import ColoProtocol
import Dispatch
import Glibc
import SwiftProtobuf
import Synchronization
import SystemPackage

/// A response and the fds that came with it (exactly `fd_count`; extras were
/// closed). The caller owns the fds.
public struct ControlResponse: Sendable {
    public let message: ColoResponse
    public let fds: [FileDescriptor]
}

/// A client of one daemon's control socket.
///
/// Requests carry ids chosen here; any number of threads may call at once,
/// and replies are matched by id in whatever order they come. Every call has
/// a deadline: a daemon that never answers costs the caller `timeout`, not a
/// hang. Calls block the calling thread (daemons run on threads, not on
/// Swift concurrency: see `ControlServer`).
///
/// There is no reader thread: one of the waiting callers reads the socket
/// for all of them (the leader) and hands each reply to its caller; when its
/// own reply has come it passes the reading on to another waiting caller. A
/// lone caller therefore receives its reply itself, with no thread hand-off,
/// which keeps a round trip close to a raw send and receive.
public final class ControlClient: Sendable {
    /// Where one call's reply lands, and the semaphore its caller sleeps on.
    /// The semaphore is signalled when the reply lands and when the caller
    /// should take over reading.
    private final class Slot: Sendable {
        let ready = DispatchSemaphore(value: 0)
    }

    private struct State {
        var nextID: UInt64 = 1
        var pending: [UInt64: Slot] = [:]
        var results: [UInt64: Result<ControlResponse, ControlSocketError>] = [:]
        /// True while some caller reads the socket for everyone.
        var leaderReading = false
        /// Set once the connection is over; later calls fail at once.
        var closedWith: ControlSocketError?
    }

    private let socket: SeqpacketSocket
    private let state = Mutex(State())

    /// Connects to the daemon listening at `path`.
    public convenience init(connectingTo path: String) throws(ControlSocketError) {
        self.init(socket: try SeqpacketSocket.connect(to: path))
    }

    /// Uses an already connected socket (for example one end of a pair).
    public init(socket: SeqpacketSocket) {
        self.socket = socket
    }

    deinit {
        socket.close()
    }

    /// Closes the connection; calls still waiting fail with `clientClosed`.
    public func close() {
        finish(with: .clientClosed)
    }

    /// Sends a request and waits for its response.
    ///
    /// - Returns: the response, unless its body is an error, which is thrown
    ///   as `.failed`.
    public func call(_ body: ColoRequest.OneOf_Body, fds: [FileDescriptor] = [],
                     timeout: Duration = .seconds(5)) throws(ControlSocketError) -> ControlResponse {
        let response = try send(body, fds: fds, timeout: timeout)
        if case .error(let error) = response.message.body {
            throw .failed(error)
        }
        return response
    }

    /// Sends a request and waits for its response, error bodies included.
    public func send(_ body: ColoRequest.OneOf_Body, fds: [FileDescriptor] = [],
                     timeout: Duration = .seconds(5)) throws(ControlSocketError) -> ControlResponse {
        var request = ColoRequest()
        request.body = body
        request.fdCount = UInt32(fds.count)
        return try send(request, fds: fds, timeout: timeout)
    }

    /// Sends a prepared envelope (its id is assigned here) and waits.
    public func send(_ request: ColoRequest, fds: [FileDescriptor] = [],
                     timeout: Duration) throws(ControlSocketError) -> ControlResponse {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let slot = Slot()
        let registered: Result<UInt64, ControlSocketError> = state.withLock { state in
            if let closed = state.closedWith { return .failure(closed) }
            let id = state.nextID
            state.nextID += 1
            state.pending[id] = slot
            return .success(id)
        }
        let id = try registered.get()
        var envelope = request
        envelope.id = id
        do throws(ControlSocketError) {
            let bytes: [UInt8]
            do { bytes = try envelope.serializedBytes() } catch {
                throw .malformedMessage("request did not serialize: \(error)")
            }
            guard bytes.count <= ControlProtocolLimits.maxDatagramBytes else {
                throw .oversized(bytes: bytes.count, limit: ControlProtocolLimits.maxDatagramBytes)
            }
            try socket.send(bytes, fds: fds)
        } catch {
            // A daemon that refused this peer has already sent its reason and
            // closed: reading delivers that reason (or EOF) to every waiting
            // call, this one included.
            if error != .disconnected {
                state.withLock { state in
                    state.pending.removeValue(forKey: id)
                    state.results.removeValue(forKey: id)
                }
                throw error
            }
        }
        return try awaitReply(id: id, slot: slot, deadline: deadline).get()
    }

    private enum Turn {
        case done(Result<ControlResponse, ControlSocketError>)
        case lead
        case wait
    }

    private func awaitReply(id: UInt64, slot: Slot, deadline: ContinuousClock.Instant)
        -> Result<ControlResponse, ControlSocketError> {
        while true {
            let turn: Turn = state.withLock { state in
                if let result = state.results.removeValue(forKey: id) { return .done(result) }
                if state.leaderReading { return .wait }
                state.leaderReading = true
                return .lead
            }
            switch turn {
            case .done(let result):
                return result
            case .wait:
                let remaining = deadline - .now
                let nanoseconds = max(0, remaining.nanoseconds)
                if slot.ready.wait(timeout: .now() + .nanoseconds(Int(clamping: nanoseconds))) == .timedOut {
                    if let result = abandon(id) { return result }
                    return .failure(.timedOut(operation: "waiting for the reply"))
                }
            case .lead:
                let outcome = readAsLeader(until: id, deadline: deadline)
                // Pass the reading on to another waiting caller, if any.
                let successor: Slot? = state.withLock { state in
                    state.leaderReading = false
                    return state.pending.first { $0.key != id }?.value
                }
                successor?.ready.signal()
                if let outcome { return outcome }
                if let result = abandon(id) { return result }
                return .failure(.timedOut(operation: "waiting for the reply"))
            }
        }
    }

    /// Reads replies for everyone until this caller's own arrives (returned)
    /// or its deadline passes (nil).
    private func readAsLeader(until id: UInt64, deadline: ContinuousClock.Instant)
        -> Result<ControlResponse, ControlSocketError>? {
        while true {
            if let result = state.withLock({ $0.results.removeValue(forKey: id) }) { return result }
            let remaining = deadline - .now
            guard remaining > .zero else { return nil }
            do {
                switch try socket.waitReadable(orWakeup: nil, timeout: remaining) {
                case .timedOut, .wakeup:
                    continue
                case .readable:
                    if let datagram = try socket.receive(maxBytes: ControlProtocolLimits.maxDatagramBytes) {
                        deliver(datagram)
                    } else {
                        finish(with: .disconnected)
                    }
                }
            } catch {
                finish(with: error)
            }
        }
    }

    /// Gives up waiting; returns the result if it landed meanwhile.
    private func abandon(_ id: UInt64) -> Result<ControlResponse, ControlSocketError>? {
        state.withLock { state in
            state.pending.removeValue(forKey: id)
            return state.results.removeValue(forKey: id)
        }
    }

    private func deliver(_ datagram: ReceivedDatagram) {
        guard !datagram.truncated, let response = try? ColoResponse(serializedBytes: datagram.bytes) else {
            datagram.fds.forEach { try? $0.close() }
            finish(with: .malformedMessage("a reply did not decode as colo.control.Response"))
            return
        }
        let expected = Int(response.fdCount)
        datagram.fds.dropFirst(expected).forEach { try? $0.close() }
        if response.id == 0 {
            datagram.fds.forEach { try? $0.close() }
            if case .error(let error) = response.body {
                finish(with: .refused(error))
            } else {
                finish(with: .malformedMessage("a reply with id 0 that is not an error"))
            }
            return
        }
        let result: Result<ControlResponse, ControlSocketError>
        if datagram.fds.count >= expected {
            result = .success(ControlResponse(message: response, fds: Array(datagram.fds.prefix(expected))))
        } else {
            result = .failure(.malformedMessage("reply declares \(expected) fds but \(datagram.fds.count) arrived"))
        }
        let slot: Slot? = state.withLock { state in
            guard let slot = state.pending.removeValue(forKey: response.id) else { return nil }
            state.results[response.id] = result
            return slot
        }
        guard let slot else {
            // The call already timed out; its late fds are not wanted.
            datagram.fds.forEach { try? $0.close() }
            return
        }
        slot.ready.signal()
    }

    /// Ends the connection: every waiting call gets `error`.
    private func finish(with error: ControlSocketError) {
        let waiting: [Slot] = state.withLock { state in
            if state.closedWith == nil { state.closedWith = error }
            let final = state.closedWith!
            for id in state.pending.keys { state.results[id] = .failure(final) }
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        _ = Glibc.shutdown(socket.fd.rawValue, Int32(SHUT_RDWR))
        waiting.forEach { $0.ready.signal() }
    }
}

