import ColoProtocol
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
/// Requests carry ids chosen here; any number may be in flight and replies
/// are matched by id in whatever order they come. Every request has a
/// deadline: a daemon that never answers costs the caller `timeout`, not a
/// hang. One reader thread receives for all requests and sleeps in poll until
/// a datagram arrives or the earliest deadline passes.
public final class ControlClient: Sendable {
    private struct Pending {
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Result<ControlResponse, ControlSocketError>, Never>
    }

    private struct State {
        var nextID: UInt64 = 1
        var pending: [UInt64: Pending] = [:]
        /// Set once the connection is over; later requests fail at once.
        var closedWith: ControlSocketError?
        /// When the reader's current poll times out (nil: no deadline).
        var readerWakesAt: ContinuousClock.Instant?
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

    /// Closes the connection; requests still waiting fail with `clientClosed`.
    public func close() {
        finish(with: .clientClosed)
        _ = Glibc.shutdown(socket.fd.rawValue, Int32(SHUT_RDWR))
    }

    /// Sends a request and waits for its response.
    ///
    /// - Returns: the response, unless its body is an error, which is thrown
    ///   as `.failed`.
    public func call(_ body: ColoRequest.OneOf_Body, fds: [FileDescriptor] = [],
                     timeout: Duration = .seconds(5)) async throws(ControlSocketError) -> ControlResponse {
        let response = try await send(body, fds: fds, timeout: timeout)
        if case .error(let error) = response.message.body {
            throw .failed(error)
        }
        return response
    }

    /// Sends a request and waits for its response, error bodies included.
    public func send(_ body: ColoRequest.OneOf_Body, fds: [FileDescriptor] = [],
                     timeout: Duration = .seconds(5)) async throws(ControlSocketError) -> ControlResponse {
        var request = ColoRequest()
        request.body = body
        request.fdCount = UInt32(fds.count)
        return try await send(request, fds: fds, timeout: timeout)
    }

    /// Sends a prepared envelope (its id is assigned here) and waits.
    public func send(_ request: ColoRequest, fds: [FileDescriptor] = [],
                     timeout: Duration) async throws(ControlSocketError) -> ControlResponse {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let result = await withCheckedContinuation { continuation in
            let registered: Result<(id: UInt64, wakeReader: Bool), ControlSocketError> = state.withLock { state in
                if let closed = state.closedWith { return .failure(closed) }
                let id = state.nextID
                state.nextID += 1
                state.pending[id] = Pending(deadline: deadline, continuation: continuation)
                // Wake the reader only if it sleeps past this new deadline.
                let wakeReader = state.readerWakesAt.map { deadline < $0 } ?? true
                if wakeReader { state.readerWakesAt = deadline }
                return .success((id, wakeReader))
            }
            let id: UInt64
            switch registered {
            case .failure(let failure):
                continuation.resume(returning: .failure(failure))
                return
            case .success(let registration):
                id = registration.id
                if registration.wakeReader { wakeup.signal() }
            }
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
                // A daemon that refused this peer has already sent its reason
                // and closed: the reader delivers that reason (or EOF) to
                // every waiting request, this one included.
                if error == .disconnected { return }
                if let pending = state.withLock({ $0.pending.removeValue(forKey: id) }) {
                    pending.continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    private func readLoop() {
        while true {
            let (closed, nextDeadline): (Bool, ContinuousClock.Instant?) = state.withLock { state in
                let next = state.pending.values.map(\.deadline).min()
                state.readerWakesAt = next
                return (state.closedWith != nil, next)
            }
            if closed { return }
            let timeout = nextDeadline.map { max(.zero, $0 - .now) }
            do {
                switch try socket.waitReadable(orWakeup: wakeup.readEnd, timeout: timeout) {
                case .wakeup:
                    wakeup.drain()
                case .timedOut:
                    break
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
            expireOverdue()
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
        guard let pending = state.withLock({ $0.pending.removeValue(forKey: response.id) }) else {
            // The request already timed out; its late fds are not wanted.
            datagram.fds.forEach { try? $0.close() }
            return
        }
        guard datagram.fds.count >= expected else {
            datagram.fds.forEach { try? $0.close() }
            pending.continuation.resume(returning: .failure(
                .malformedMessage("reply declares \(expected) fds but \(datagram.fds.count) arrived")))
            return
        }
        pending.continuation.resume(returning: .success(
            ControlResponse(message: response, fds: Array(datagram.fds.prefix(expected)))))
    }

    private func expireOverdue() {
        let now = ContinuousClock.now
        let overdue = state.withLock { state in
            let ids = state.pending.filter { $0.value.deadline <= now }.map(\.key)
            return ids.compactMap { state.pending.removeValue(forKey: $0) }
        }
        for pending in overdue {
            pending.continuation.resume(returning: .failure(.timedOut(operation: "waiting for the reply")))
        }
    }

    private func finish(with error: ControlSocketError) {
        let pending = state.withLock { state in
            if state.closedWith == nil { state.closedWith = error }
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        pending.forEach { $0.continuation.resume(returning: .failure(error)) }
        wakeup.signal()
    }
}
