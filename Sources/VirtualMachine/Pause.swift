import ControlSocket
import Devices
import Glibc
import KVM

/// What a paused VM remembers: the guest's clocks as they stood at the
/// pause (the guest sees no time pass while paused, and saving twice gives
/// the same state: the PIT is halted meanwhile, so no timer interrupt
/// lands in the paused VM's interrupt controllers), and whether a state
/// was loaded.
final class PauseState: @unchecked Sendable {
    /// Serialises pause, resume, save and load.
    let lock = ThreadLock()
    var paused = false
    /// kvmclock, the PIT and each vCPU's TSC at the pause (or as loaded).
    var clock: UInt64 = 0
    var pit: [UInt8] = []
    var timeStampCounters: [UInt64] = []
    /// A state was loaded since the pause: the devices look at every queue
    /// at resume (the source's pending notifications are not in the state).
    var loaded = false
    /// The MSRs saved with each vCPU (found at the first save).
    var msrIndexes: [UInt32]?

    init() {}
}

/// How long pausing took.
public struct PauseTimings: Sendable {
    /// Request to every vCPU parked outside KVM_RUN.
    public var vcpusStopped: Duration
    /// Request to the devices quiesced too.
    public var paused: Duration
}

/// Pause and resume. A paused VM's vCPUs are parked outside KVM_RUN with
/// their last exit completed, its devices neither take notifications nor
/// read backends (block requests in flight are finished first), and its
/// guest-visible clocks stand still.
extension VirtualMachine {
    static let pauseTimeout: Duration = .seconds(2)
    static let drainTimeout: Duration = .seconds(5)

    /// True while paused (also a VM prepared for incoming state).
    public var isPaused: Bool { pauseState.lock.withLock { pauseState.paused } }

    /// A VM prepared for incoming state that has not had one loaded.
    public var awaitsState: Bool {
        pauseState.lock.withLock { !pauseState.loaded && !hasRun && isIncoming }
    }

    var isIncoming: Bool {
        if case .incoming = configuration.kernel { return true }
        return false
    }

    var hasRun: Bool { lifecycle.withLock { started != nil } }

    /// Pauses the VM; a paused one stays paused (zero timings). A VM never
    /// started (prepared for incoming state) pauses at once.
    public func pause() throws(VMStateError) -> PauseTimings {
        try pauseState.lock.withLock { () throws(VMStateError) -> PauseTimings in
            guard !pauseState.paused else { return PauseTimings(vcpusStopped: .zero, paused: .zero) }
            guard end == nil else { throw .notRunning("the VM has ended") }
            let began = ContinuousClock.now
            if hasRun {
                pauseGate.raise()
                vcpus.forEach { $0.kick() }
                guard pauseGate.waitUntilParked(vcpus.count, timeout: Self.pauseTimeout) else {
                    pauseGate.lower()
                    throw .notRunning(end == nil ? "vCPUs did not stop within \(Self.pauseTimeout)" : "the VM has ended")
                }
            }
            let vcpusStopped = ContinuousClock.now - began
            transports.forEach { $0.quiesce() }
            eventLoop.wake()
            pauseState.paused = true
            pauseState.loaded = false
            do {
                pauseState.clock = try kvm.clock()
                pauseState.pit = try kvm.inKernelDevices().pit
                pauseState.timeStampCounters = try vcpus.map { runner throws(KVMError) in try runner.vcpu.timeStampCounter() }
                try kvm.haltPIT(pauseState.pit)
            } catch {
                throw .kvm("reading the clocks at pause: \(error)")
            }
            let drainDeadline = ContinuousClock.now + Self.drainTimeout
            while !transports.allSatisfy(\.isQuiet) {
                guard ContinuousClock.now < drainDeadline else {
                    throw .devicesBusy("block requests still in flight after \(Self.drainTimeout)")
                }
                usleep(200)
            }
            return PauseTimings(vcpusStopped: vcpusStopped, paused: .now - began)
        }
    }

    /// Resumes a paused VM (or starts one prepared for incoming state,
    /// once a state was loaded); returns how long it took.
    public func resume() throws(VMStateError) -> Duration {
        try pauseState.lock.withLock { () throws(VMStateError) -> Duration in
            guard pauseState.paused else { throw .notPaused }
            guard end == nil else { throw .notRunning("the VM has ended") }
            guard hasRun || !isIncoming || pauseState.loaded else {
                throw .notRunning("no state was loaded into the VM prepared for incoming state")
            }
            let began = ContinuousClock.now
            do {
                try kvm.setClock(pauseState.clock)
                try kvm.restorePIT(pauseState.pit)
            } catch {
                throw .kvm("restoring the clocks at resume: \(error)")
            }
            transports.forEach { $0.unquiesce(recheckQueues: pauseState.loaded) }
            eventLoop.wake()
            pauseState.paused = false
            if hasRun {
                pauseGate.lower()
            } else {
                start()
            }
            return .now - began
        }
    }
}
