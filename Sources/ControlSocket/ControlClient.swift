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
/// hang. One reader thread receives for all callers. Calls block the calling
/// thread (daemons run on threads, not on Swift concurrency: see
/// `ControlServer`).
public final class ControlClient: Sendable {
    /// Where one call's reply lands, and the semaphore its caller sleeps on.
    private final class Slot: @unchecked Sendable {
        // Written once by the reader (or by `finish`) before `ready.signal()`,
        // read by the caller only after `ready.wait()` returned.
        var result: Result<ControlResponse, ControlSocketError>?
        let ready = DispatchSemaphore(value: 0)
    }

    private struct State {
        var nextID: UInt64 = 1
        var pending: [UInt64: Slot] = [:]
        /// Set once the connection is over; later calls fail at once.
        var closedWith: ControlSocketError?
    }

    private let socket: SeqpacketSocket
    private let state = Mutex(State())
    private let wakeup: WakeupPipe

    /// Connects to the daemon listening at `path`.
    public convenience init(connectingTo path: String) throws(ControlSocketError) {
        try self.init(socket: SeqpacketSocket.connect(to: path))
    }

    /// Uses an already connected socket (for example one end of a pair).
    public init(socket: SeqpacketSocket) throws(ControlSocketError) {
        self.socket = socket
        self.wakeup = try WakeupPipe()
        spawnThread(name: "control-client") { [self] in readLoop() }
    }

    deinit {
        socket.close()
    }

    /// Closes the connection; calls still waiting fail with `clientClosed`.
    public func close() {
        finish(with: .clientClosed)
        wakeup.signal()
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
        let deadline = DispatchTime.now() + .nanoseconds(Int(clamping: timeout.nanoseconds))
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
            // closed: the reader delivers that reason (or EOF) to every
            // waiting call, this one included.
            if error != .disconnected {
                state.withLock { _ = $0.pending.removeValue(forKey: id) }
                throw error
            }
        }
        if slot.ready.wait(timeout: deadline) == .timedOut {
            let stillPending = state.withLock { $0.pending.removeValue(forKey: id) != nil }
            if stillPending { throw .timedOut(operation: "waiting for the reply") }
            // The reply landed between the timeout and the removal.
            slot.ready.wait()
        }
        return try slot.result!.get()
    }

    private func readLoop() {
        while true {
            do {
                switch try socket.waitReadable(orWakeup: wakeup.readEnd, timeout: nil) {
                case .wakeup, .timedOut:
                    if state.withLock({ $0.closedWith != nil }) { return }
                case .readable:
                    guard let datagram = try socket.receive(maxBytes: ControlProtocolLimits.maxDatagramBytes) else {
                        finish(with: .disconnected)
                        return
                    }
                    deliver(datagram)
                }
            } catch {
                finish(with: error)
                return
            }
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
        guard let slot = state.withLock({ $0.pending.removeValue(forKey: response.id) }) else {
            // The call already timed out; its late fds are not wanted.
            datagram.fds.forEach { try? $0.close() }
            return
        }
        if datagram.fds.count >= expected {
            slot.result = .success(ControlResponse(message: response, fds: Array(datagram.fds.prefix(expected))))
        } else {
            datagram.fds.forEach { try? $0.close() }
            slot.result = .failure(.malformedMessage("reply declares \(expected) fds but \(datagram.fds.count) arrived"))
        }
        slot.ready.signal()
    }

    private func finish(with error: ControlSocketError) {
        let waiting = state.withLock { state in
            if state.closedWith == nil { state.closedWith = error }
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        for slot in waiting {
            slot.result = .failure(error)
            slot.ready.signal()
        }
        _ = Glibc.shutdown(socket.fd.rawValue, Int32(SHUT_RDWR))
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds.multipliedReportingOverflow(by: 1_000_000_000).overflow
            ? Int64.max : seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
