internal import CKVM
import Glibc
import SystemPackage

/// One vCPU fd and its shared kvm_run page. Everything but
/// `requestImmediateExit` belongs to the vCPU's own thread: KVM requires
/// vCPU ioctls to come from one thread at a time, and the run page is that
/// thread's mailbox with the kernel.
public final class KVMVcpu: @unchecked Sendable {
    public let id: UInt32
    public let fd: FileDescriptor
    private let runPage: UnsafeMutableRawPointer
    private let runSize: Int
    private var runState: UnsafeMutablePointer<kvm_run> { runPage.assumingMemoryBound(to: kvm_run.self) }

    init(id: UInt32, fd: FileDescriptor, run: UnsafeMutableRawPointer, runSize: Int) {
        self.id = id
        self.fd = fd
        self.runPage = run
        self.runSize = runSize
    }

    deinit {
        munmap(runPage, runSize)
        try? fd.close()
    }

    /// Enters the guest until it exits to user space.
    ///
    /// A signal delivered to the thread (see `requestImmediateExit`) ends the
    /// run with `.interrupted`, as does an exit KVM itself reports as a
    /// pending signal.
    public func run() throws(KVMError) -> VcpuExit {
        if ioctl(fd.rawValue, KVMIoctl.run.number, 0) < 0 {
            let error = Errno(rawValue: errno)
            if error == .interrupted || error == .resourceTemporarilyUnavailable {
                runState.pointee.immediate_exit = 0
                return .interrupted
            }
            throw .ioctl(.run, error)
        }
        switch Int32(runState.pointee.exit_reason) {
        case KVM_EXIT_IO:
            var direction: UInt8 = 0, size: UInt8 = 0, port: UInt16 = 0
            var count: UInt32 = 0, offset: UInt64 = 0
            colo_kvm_run_io(runState, &direction, &size, &port, &count, &offset)
            return .io(PortAccess(port: port, size: Int(size), count: Int(count),
                                  isWrite: direction == KVM_EXIT_IO_OUT, data: runPage + Int(offset)))
        case KVM_EXIT_MMIO:
            var address: UInt64 = 0, length: UInt32 = 0, isWrite: UInt8 = 0
            let data = colo_kvm_run_mmio(runState, &address, &length, &isWrite)!
            return .mmio(MemoryAccess(address: address, size: Int(min(length, 8)), isWrite: isWrite != 0,
                                      data: UnsafeMutableRawPointer(data)))
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: colo_kvm_run_system_event_type(runState))
        case KVM_EXIT_FAIL_ENTRY:
            return .failedEntry(hardwareReason: colo_kvm_run_fail_entry_reason(runState))
        case KVM_EXIT_INTERNAL_ERROR:
            return .internalError(suberror: colo_kvm_run_internal_suberror(runState))
        case KVM_EXIT_INTR:
            return .interrupted
        default:
            return .other(reason: runState.pointee.exit_reason)
        }
    }

    /// Makes the vCPU's current or next KVM_RUN return at once. Callable
    /// from any thread; pair it with a signal to the vCPU thread, which
    /// interrupts a KVM_RUN already under way (the flag covers the window
    /// just before it starts).
    public func requestImmediateExit() {
        withUnsafeMutablePointer(to: &runState.pointee.immediate_exit) { flag in
            UnsafeMutableRawPointer(flag).storeBytes(of: 1, as: UInt8.self)
        }
    }

    /// Presents `entries` as the guest's CPUID.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        let bytes = MemoryLayout<kvm_cpuid2>.size + entries.count * MemoryLayout<kvm_cpuid_entry2>.stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(entries.count)
        let table = (buffer + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
        for (index, entry) in entries.enumerated() { table[index] = entry.kvmEntry }
        try Ioctl.call(fd, .setCPUID2, buffer)
    }

    public func generalRegisters() throws(KVMError) -> GeneralRegisters {
        var registers = kvm_regs()
        try Ioctl.call(fd, .getRegisters, &registers)
        return GeneralRegisters(registers)
    }

    public func setGeneralRegisters(_ registers: GeneralRegisters) throws(KVMError) {
        var value = registers.kvmValue
        try Ioctl.call(fd, .setRegisters, &value)
    }

    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var registers = kvm_sregs()
        try Ioctl.call(fd, .getSpecialRegisters, &registers)
        return SpecialRegisters(registers)
    }

    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(KVMError) {
        var value = kvm_sregs()
        try Ioctl.call(fd, .getSpecialRegisters, &value)
        registers.apply(to: &value)
        try Ioctl.call(fd, .setSpecialRegisters, &value)
    }
}

/// Why KVM_RUN returned.
public enum VcpuExit {
    /// IN/OUT (possibly a string instruction: `count` items).
    case io(PortAccess)
    /// A load or store to guest-physical space no memory slot covers.
    case mmio(MemoryAccess)
    /// HLT with no interrupt controller in the kernel (not with ours).
    case halt
    /// Triple fault: the CPU reset itself.
    case shutdown
    /// KVM_SYSTEM_EVENT_* (shutdown, reset, crash) from PSCI-like paths.
    case systemEvent(type: UInt32)
    /// The hardware refused to enter the guest: invalid state.
    case failedEntry(hardwareReason: UInt64)
    /// KVM could not emulate something.
    case internalError(suberror: UInt32)
    /// A signal (a kick) or immediate_exit ended the run.
    case interrupted
    case other(reason: UInt32)
}

/// One port I/O exit. `data` lies in the kvm_run page: for an OUT it holds
/// the `count` values written; for an IN the VMM stores the answers there.
public struct PortAccess {
    public let port: UInt16
    public let size: Int
    public let count: Int
    public let isWrite: Bool
    public let data: UnsafeMutableRawPointer
}

/// One MMIO exit; `data` holds the value written, or receives the answer.
public struct MemoryAccess {
    public let address: UInt64
    public let size: Int
    public let isWrite: Bool
    public let data: UnsafeMutableRawPointer
}
