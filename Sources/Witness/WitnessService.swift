import ColoProtocol
import ControlSocket
import DurableFile
import Glibc
import Logging
import PairConfiguration
import PeerAuthentication
import PeerLink
import Synchronization

/// The witness server: accepts authenticated claims and answers each with a
/// verdict, persisting every grant before it is announced (a grant the
/// witness forgot in a crash could be given twice).
public final class WitnessService: Sendable {
    private let listener: Int32
    private let key: PeerKey
    private let stateFile: String?
    private let logger: Logger
    private let registry: Mutex<WitnessRegistry>

    /// The channel name claims are authenticated for.
    public static let channel = "witness"

    public init(listener: Int32, key: PeerKey, stateFile: String?, logger: Logger) throws(WitnessError) {
        self.listener = listener
        self.key = key
        self.stateFile = stateFile
        self.logger = logger
        var registry = WitnessRegistry()
        if let stateFile {
            let text: String?
            do { text = try DurableFile.read(stateFile) } catch { throw .io(error.description) }
            if let text { registry = try WitnessRegistry(serialized: text) }
        }
        self.registry = Mutex(registry)
    }

    /// Serves claims until the process ends, one thread per connection.
    public func run() -> Never {
        while true {
            guard let fd = try? TCPConnection.accept(from: listener, timeout: nil) else { continue }
            spawnThread(name: "witness-claim") { [self] in
                serve(fd)
                close(fd)
            }
        }
    }

    private func serve(_ fd: Int32) {
        do {
            _ = try PeerAuthenticator.authenticate(fd: fd, role: .responder, channel: Self.channel, key: key,
                                                   timeout: .seconds(5))
            let stream = FrameStream(fd: fd, maxFrameBytes: 4096)
            guard let frame = try stream.receive(timeout: .seconds(5)) else { return }
            let claim = try WitnessClaim(serializedBytes: frame)
            let verdict = decide(claim)
            try stream.send(try verdict.serializedBytes())
        } catch {
            logger.warning("claim not served", metadata: ["event": "witness_claim_failed", "error": "\(error)"])
        }
    }

    /// Decides a claim and, for a grant, persists it before answering.
    func decide(_ claim: WitnessClaim) -> WitnessVerdict {
        var verdict = WitnessVerdict()
        guard !claim.pair.isEmpty, !claim.host.isEmpty, !claim.pair.contains(" "), !claim.host.contains(" "),
              !claim.pair.contains("\n"), !claim.host.contains("\n") else {
            verdict.reason = "pair and host must be non-empty words"
            return verdict
        }
        registry.withLock { registry in
            var updated = registry
            switch updated.claim(pair: claim.pair, host: claim.host, epoch: claim.epoch) {
            case .granted:
                do {
                    if updated != registry, let stateFile { try DurableFile.write(updated.serialized, to: stateFile) }
                    registry = updated
                    verdict.granted = true
                    verdict.holder = claim.host
                    verdict.epoch = claim.epoch
                } catch {
                    verdict.reason = "the grant could not be recorded: \(error)"
                }
            case .refused(let holder, let reason):
                verdict.holder = holder.host
                verdict.epoch = holder.epoch
                verdict.reason = reason
            }
        }
        logger.notice(verdict.granted ? "pair granted" : "claim refused", metadata: [
            "event": verdict.granted ? "witness_granted" : "witness_refused",
            "pair": "\(claim.pair)", "host": "\(claim.host)", "epoch": "\(claim.epoch)",
            "holder": "\(verdict.holder)", "reason": "\(verdict.reason)",
        ])
        return verdict
    }
}

/// Asks a witness for a pair.
public enum WitnessClient {
    public static func claim(_ claim: WitnessClaim, at address: SocketAddress, key: PeerKey,
                             timeout: Duration) throws(WitnessError) -> WitnessVerdict {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let fd: Int32
        do {
            fd = try TCPConnection.connect(to: address, timeout: timeout)
        } catch {
            throw .io("cannot reach the witness at \(address): \(error)")
        }
        defer { close(fd) }
        do {
            _ = try PeerAuthenticator.authenticate(fd: fd, role: .initiator, channel: WitnessService.channel,
                                                   key: key, timeout: max(.milliseconds(1), deadline - .now))
            let stream = FrameStream(fd: fd, maxFrameBytes: 4096)
            try stream.send(try claim.serializedBytes(), timeout: max(.milliseconds(1), deadline - .now))
            guard let frame = try stream.receive(timeout: max(.milliseconds(1), deadline - .now)) else {
                throw WitnessError.protocolViolation("the witness closed without a verdict")
            }
            return try WitnessVerdict(serializedBytes: frame)
        } catch let error as WitnessError {
            throw error
        } catch {
            throw .io("\(error)")
        }
    }
}
