import ControlSocket
import Devices
import Glibc
import KVM
import Synchronization

/// What a vCPU's thread is doing.
public enum VcpuState: Int, Sendable {
    case created = 0
    case running = 1
    case stopped = 2

    public var name: String {
        switch self {
        case .created: return "created"
        case .running: return "running"
        case .stopped: return "stopped"
        }
    }
}

/// One vCPU and the thread that runs it: KVM_RUN in a loop, each exit
/// handed to the VM's handler, until stopped.
///
/// Stopping is prompt whatever the guest does: `requestStop` sets
/// kvm_run.immediate_exit (a KVM_RUN about to start returns at once) and
/// signals the thread (a KVM_RUN under way returns EINTR). Pausing uses the
/// same kick, then parks the thread at the VM's `PauseGate`.
final class VcpuRunner: @unchecked Sendable {
    /// The signal that kicks a vCPU thread out of KVM_RUN; its handler
    /// does nothing, interrupting the ioctl is the point.
    static let kickSignal = SIGUSR1

    let vcpu: KVMVcpu
    let statistics = ExitStatistics()
    private let stateValue = Atomic<Int>(VcpuState.created.rawValue)
    private let stopRequested = Atomic<Bool>(false)
    /// The thread, while its loop runs (0 before and after). Guarded by
    /// `threadLock` so a kick never targets a thread that has exited.
    private var threadID: UInt = 0
    private let threadLock = ThreadLock()
    private let finished = DeviceSemaphore()
    private let gate: PauseGate

    init(vcpu: KVMVcpu, gate: PauseGate) {
        self.vcpu = vcpu
        self.gate = gate
        Self.installKickHandler
    }

    var state: VcpuState { VcpuState(rawValue: stateValue.load(ordering: .acquiring)) ?? .stopped }

    /// What the thread does with an exit: true to keep running.
    typealias ExitHandler = @Sendable (VcpuExit, VcpuRunner) -> Bool

    /// Starts the thread; `ended` runs on it when the loop is over, with
    /// the reason when the guest or KVM ended it (nil when stopped).
    func start(handler: @escaping ExitHandler, ended: @escaping @Sendable (VirtualMachineEnd?) -> Void) {
        stateValue.store(VcpuState.running.rawValue, ordering: .releasing)
        spawnThread(name: "vcpu\(vcpu.id)") { [self] in
            threadLock.withLock { threadID = UInt(pthread_self()) }
            var signals = sigset_t()
            sigemptyset(&signals)
            sigaddset(&signals, Self.kickSignal)
            pthread_sigmask(SIG_UNBLOCK, &signals, nil)
            let reason = loop(handler)
            threadLock.withLock { threadID = 0 }
            stateValue.store(VcpuState.stopped.rawValue, ordering: .releasing)
            ended(reason)
            finished.signal()
        }
    }

    private func loop(_ handler: ExitHandler) -> VirtualMachineEnd? {
        while !stopRequested.load(ordering: .acquiring) {
            if gate.isRaised {
                if let failure = park(handler) { return failure }
                continue
            }
            let exit: VcpuExit
            do {
                exit = try vcpu.run()
            } catch {
                return .failed("vCPU \(vcpu.id): \(error)")
            }
            if !handler(exit, self) { break }
        }
        return nil
    }

    /// Completes the last exit (KVM finishes an I/O instruction only on the
    /// next KVM_RUN, which immediate_exit ends before any guest
    /// instruction), then waits at the gate. Returns a failure only.
    private func park(_ handler: ExitHandler) -> VirtualMachineEnd? {
        while true {
            vcpu.requestImmediateExit()
            let exit: VcpuExit
            do {
                exit = try vcpu.run()
            } catch {
                return .failed("vCPU \(vcpu.id): \(error)")
            }
            if case .interrupted = exit { break }
            if !handler(exit, self) { return nil }
        }
        gate.park { stopRequested.load(ordering: .acquiring) }
        return nil
    }

    /// Makes the thread leave KVM_RUN and end its loop. Callable from any
    /// thread, also the vCPU's own.
    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        gate.wake()
        kick()
    }

    /// Makes the thread leave KVM_RUN now (or not enter it next time).
    func kick() {
        vcpu.requestImmediateExit()
        threadLock.withLock {
            if threadID != 0 && pthread_equal(pthread_t(threadID), pthread_self()) == 0 {
                pthread_kill(pthread_t(threadID), Self.kickSignal)
            }
        }
    }

    /// Interrupts a KVM_RUN under way on another thread (the loop enters
    /// it again at once), so KVM looks at newly raised interrupts now; a
    /// no-op on the vCPU's own thread, whose next KVM_RUN sees them anyway.
    func wakeFromHalt() {
        threadLock.withLock {
            if threadID != 0 && pthread_equal(pthread_t(threadID), pthread_self()) == 0 {
                pthread_kill(pthread_t(threadID), Self.kickSignal)
            }
        }
    }

    /// Waits for a started thread to end.
    func waitUntilStopped() {
        finished.wait()
        finished.signal()
    }

    private static let installKickHandler: Void = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0          // no SA_RESTART: KVM_RUN must return EINTR
        sigaction(kickSignal, &action, nil)
    }()
}
