internal import CKVM
import Glibc
import SystemPackage

/// One model-specific register and its value.
public struct ModelSpecificRegister: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64

    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }

    /// IA32_TSC: the guest's time stamp counter.
    public static let timeStampCounter: UInt32 = 0x10
    /// IA32_TSC_DEADLINE: restored after the local APIC, whose restore
    /// disarms the timer it arms.
    public static let tscDeadline: UInt32 = 0x6E0
}

/// Everything KVM holds about one vCPU, as the kernel's own structures
/// (their layout is the stable KVM ABI), so a vCPU can be stopped here and
/// continued in another process. Only `msrs` is decoded: its TSC is the
/// one value that moves while the vCPU is stopped.
public struct VcpuSnapshot: Sendable, Equatable {
    /// KVM_MP_STATE_* (runnable, halted, waiting for SIPI...).
    public var multiprocessingState: UInt32 = 0
    /// struct kvm_regs.
    public var registers: [UInt8] = []
    /// struct kvm_sregs.
    public var specialRegisters: [UInt8] = []
    /// struct kvm_xsave (x87, SSE, AVX... state; the FPU state with it).
    public var extendedState: [UInt8] = []
    /// struct kvm_xcrs (XCR0).
    public var extendedControlRegisters: [UInt8] = []
    public var msrs: [ModelSpecificRegister] = []
    /// struct kvm_lapic_state: the local APIC's register page.
    public var localAPIC: [UInt8] = []
    /// struct kvm_vcpu_events: pending exceptions, interrupts, NMIs, SMM.
    public var events: [UInt8] = []
    /// struct kvm_debugregs.
    public var debugRegisters: [UInt8] = []
    /// The guest TSC frequency; a target must run at the same one.
    public var tscKilohertz: UInt32 = 0

    public init() {}

    public static let registersSize = MemoryLayout<kvm_regs>.size
    public static let specialRegistersSize = MemoryLayout<kvm_sregs>.size
    public static let extendedControlRegistersSize = MemoryLayout<kvm_xcrs>.size
    public static let localAPICSize = MemoryLayout<kvm_lapic_state>.size
    public static let eventsSize = MemoryLayout<kvm_vcpu_events>.size
    public static let debugRegistersSize = MemoryLayout<kvm_debugregs>.size
    /// The LAPIC's current-count register: computed by KVM when read and
    /// ignored when written, so it is stored as zero (two saves of a
    /// stopped vCPU are then equal).
    static let currentCountOffset = 0x390

    /// The guest TSC in `msrs`, if saved.
    public var timeStampCounter: UInt64? {
        get { msrs.first { $0.index == ModelSpecificRegister.timeStampCounter }?.value }
        set {
            guard let newValue, let at = msrs.firstIndex(where: { $0.index == ModelSpecificRegister.timeStampCounter })
            else { return }
            msrs[at].value = newValue
        }
    }
}

extension KVMDevice {
    /// The MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST).
    public func savableMSRIndexes() throws(KVMError) -> [UInt32] {
        var capacity = 64
        while true {
            let bytes = 4 + capacity * 4
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { buffer.deallocate() }
            buffer.storeBytes(of: UInt32(capacity), as: UInt32.self)
            do {
                try Ioctl.call(fd, .getMSRIndexList, buffer)
            } catch {
                if case .ioctl(_, let code) = error, code.rawValue == E2BIG, capacity < 65536 {
                    capacity = max(capacity * 2, Int(buffer.load(as: UInt32.self)))
                    continue
                }
                throw error
            }
            let count = Int(buffer.load(as: UInt32.self))
            return (0..<count).map { buffer.load(fromByteOffset: 4 + $0 * 4, as: UInt32.self) }
        }
    }

    /// Bytes of struct kvm_xsave on this host: 4096, or more where
    /// KVM_CAP_XSAVE2 says the CPU's state is larger (AMX).
    public var extendedStateSize: Int {
        let size = (try? Ioctl.call(fd, .checkExtension, value: KVM_CAP_XSAVE2)) ?? 0
        return max(Int(size), MemoryLayout<kvm_xsave>.size)
    }
}

extension KVMVcpu {
    /// Of `indexes`, those this vCPU can read (some listed MSRs depend on
    /// CPU features the guest was not given).
    public func readableMSRs(_ indexes: [UInt32]) -> [UInt32] {
        indexes.filter { index in
            (try? readMSRs([index]))?.count == 1
        }
    }

    /// The MSRs at `indexes` (KVM_GET_MSRS); stops at the first KVM
    /// cannot read, so check the count.
    public func readMSRs(_ indexes: [UInt32]) throws(KVMError) -> [ModelSpecificRegister] {
        let buffer = Self.msrBuffer(indexes.map { ModelSpecificRegister(index: $0, value: 0) })
        defer { buffer.deallocate() }
        let read = Int(try Ioctl.call(fd, .getMSRs, buffer))
        let entries = (buffer + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        return (0..<read).map { ModelSpecificRegister(index: entries[$0].index, value: entries[$0].data) }
    }

    /// Writes `msrs` (KVM_SET_MSRS); fails naming the first one KVM refused.
    public func writeMSRs(_ msrs: [ModelSpecificRegister]) throws(KVMError) {
        guard !msrs.isEmpty else { return }
        let buffer = Self.msrBuffer(msrs)
        defer { buffer.deallocate() }
        let written = Int(try Ioctl.call(fd, .setMSRs, buffer))
        guard written == msrs.count else {
            throw .stateRefused("MSR 0x\(String(msrs[written].index, radix: 16))")
        }
    }

    private static func msrBuffer(_ msrs: [ModelSpecificRegister]) -> UnsafeMutableRawPointer {
        let bytes = MemoryLayout<kvm_msrs>.size + msrs.count * MemoryLayout<kvm_msr_entry>.stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        buffer.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(msrs.count)
        let entries = (buffer + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (at, msr) in msrs.enumerated() {
            entries[at].index = msr.index
            entries[at].data = msr.value
        }
        return buffer
    }

    /// Reads the vCPU's whole state. The vCPU must be out of KVM_RUN with
    /// its last exit completed. MP state comes first: reading it makes KVM
    /// settle pending INIT/SIPI into the LAPIC state read after it.
    public func snapshot(msrIndexes: [UInt32], extendedStateSize: Int) throws(KVMError) -> VcpuSnapshot {
        var state = VcpuSnapshot()
        var mp = kvm_mp_state()
        try Ioctl.call(fd, .getMPState, &mp)
        state.multiprocessingState = mp.mp_state
        state.registers = try Ioctl.read(fd, .getRegisters, size: VcpuSnapshot.registersSize)
        state.specialRegisters = try Ioctl.read(fd, .getSpecialRegisters, size: VcpuSnapshot.specialRegistersSize)
        state.extendedState = try Ioctl.read(fd, extendedStateSize > MemoryLayout<kvm_xsave>.size ? .getXSave2 : .getXSave,
                                             size: extendedStateSize)
        state.extendedControlRegisters = try Ioctl.read(fd, .getXCRs, size: VcpuSnapshot.extendedControlRegistersSize)
        state.msrs = try readMSRs(msrIndexes)
        guard state.msrs.count == msrIndexes.count else {
            throw .stateRefused("MSR 0x\(String(msrIndexes[state.msrs.count], radix: 16)) cannot be read")
        }
        state.localAPIC = try Ioctl.read(fd, .getLAPIC, size: VcpuSnapshot.localAPICSize)
        for at in 0..<4 { state.localAPIC[VcpuSnapshot.currentCountOffset + at] = 0 }
        state.events = try Ioctl.read(fd, .getVcpuEvents, size: VcpuSnapshot.eventsSize)
        state.debugRegisters = try Ioctl.read(fd, .getDebugRegisters, size: VcpuSnapshot.debugRegistersSize)
        state.tscKilohertz = UInt32(try Ioctl.call(fd, .getTSCFrequency))
        return state
    }

    /// Loads a whole state into the stopped vCPU, in the order QEMU uses:
    /// registers, extended state, control registers, MSRs, events, MP
    /// state, local APIC, then the TSC deadline (the APIC load disarms its
    /// timer) and debug registers. Sizes must have been checked.
    public func restore(_ state: VcpuSnapshot) throws(KVMError) {
        try Ioctl.write(fd, .setRegisters, state.registers)
        try Ioctl.write(fd, .setXSave, state.extendedState)
        try Ioctl.write(fd, .setXCRs, state.extendedControlRegisters)
        try Ioctl.write(fd, .setSpecialRegisters, state.specialRegisters)
        try writeMSRs(state.msrs.filter { $0.index != ModelSpecificRegister.tscDeadline })
        try Ioctl.write(fd, .setVcpuEvents, state.events)
        var mp = kvm_mp_state(mp_state: state.multiprocessingState)
        try Ioctl.call(fd, .setMPState, &mp)
        try Ioctl.write(fd, .setLAPIC, state.localAPIC)
        try writeMSRs(state.msrs.filter { $0.index == ModelSpecificRegister.tscDeadline })
        try Ioctl.write(fd, .setDebugRegisters, state.debugRegisters)
    }

    /// The guest TSC now.
    public func timeStampCounter() throws(KVMError) -> UInt64 {
        guard let msr = try readMSRs([ModelSpecificRegister.timeStampCounter]).first else {
            throw .stateRefused("IA32_TSC cannot be read")
        }
        return msr.value
    }

    /// KVM's guest TSC frequency for this vCPU.
    public func tscKilohertz() throws(KVMError) -> UInt32 {
        UInt32(try Ioctl.call(fd, .getTSCFrequency))
    }
}

extension Ioctl {
    /// A structure read into `size` fresh bytes.
    static func read(_ fd: FileDescriptor, _ request: KVMIoctl, size: Int,
                     prepare: (UnsafeMutableRawPointer) -> Void = { _ in }) throws(KVMError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        var outcome: Result<Int32, KVMError> = .success(0)
        bytes.withUnsafeMutableBytes { buffer in
            prepare(buffer.baseAddress!)
            do throws(KVMError) {
                outcome = .success(try call(fd, request, buffer.baseAddress!))
            } catch {
                outcome = .failure(error)
            }
        }
        _ = try outcome.get()
        return bytes
    }

    /// A structure written from `bytes`.
    static func write(_ fd: FileDescriptor, _ request: KVMIoctl, _ bytes: [UInt8]) throws(KVMError) {
        var copy = bytes
        var outcome: Result<Int32, KVMError> = .success(0)
        copy.withUnsafeMutableBytes { buffer in
            do throws(KVMError) {
                outcome = .success(try call(fd, request, buffer.baseAddress!))
            } catch {
                outcome = .failure(error)
            }
        }
        _ = try outcome.get()
    }
}
