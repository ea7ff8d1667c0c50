internal import CKVM
import Glibc
import SystemPackage

/// The VM-wide devices KVM emulates in the kernel, as the kernel's own
/// structures (stable KVM ABI): the 8259 pair, the IOAPIC and the 8254.
public struct InKernelDevicesSnapshot: Sendable, Equatable {
    /// struct kvm_irqchip for chip 0 (PIC master), 1 (PIC slave), 2 (IOAPIC).
    public var picMaster: [UInt8] = []
    public var picSlave: [UInt8] = []
    public var ioapic: [UInt8] = []
    /// struct kvm_pit_state2, each channel's count_load_time zeroed: a host
    /// time the kernel ignores on restore (a load restarts the counter).
    public var pit: [UInt8] = []

    public init() {}

    public static let irqChipSize = MemoryLayout<kvm_irqchip>.size
    public static let pitSize = MemoryLayout<kvm_pit_state2>.size
}

extension KVMVirtualMachine {
    static let picMasterChip: UInt32 = 0, picSlaveChip: UInt32 = 1, ioapicChip: UInt32 = 2

    /// Reads the in-kernel PIC pair, IOAPIC and PIT.
    public func inKernelDevices() throws(KVMError) -> InKernelDevicesSnapshot {
        var state = InKernelDevicesSnapshot()
        state.picMaster = try irqChip(Self.picMasterChip)
        state.picSlave = try irqChip(Self.picSlaveChip)
        state.ioapic = try irqChip(Self.ioapicChip)
        var pit = kvm_pit_state2()
        try Ioctl.call(fd, .getPIT2, &pit)
        pit.channels.0.count_load_time = 0
        pit.channels.1.count_load_time = 0
        pit.channels.2.count_load_time = 0
        state.pit = withUnsafeBytes(of: pit) { Array($0) }
        return state
    }

    /// Loads the PIC pair, IOAPIC and PIT, the PIT halted (the VM is
    /// paused; see `haltPIT`). Sizes and chip ids must have been checked
    /// with `InKernelDevicesSnapshot.problem`.
    public func restore(_ state: InKernelDevicesSnapshot) throws(KVMError) {
        try Ioctl.write(fd, .setIRQChip, state.picMaster)
        try Ioctl.write(fd, .setIRQChip, state.picSlave)
        try Ioctl.write(fd, .setIRQChip, state.ioapic)
        try haltPIT(state.pit)
    }

    /// Loads the PIT alone: its channels restart counting from now, and
    /// ticks missed while the VM was paused are forgotten, not replayed.
    public func restorePIT(_ pit: [UInt8]) throws(KVMError) {
        try Ioctl.write(fd, .setPIT2, pit)
    }

    /// Loads `pit` with channel 0 stopped: KVM's PIT keeps its own timer,
    /// which would raise IRQ 0 into the PIC and IOAPIC of a paused VM and
    /// change the state a save reads. Mode 5 (hardware-triggered strobe)
    /// has no timer in KVM; `restorePIT` with the real state starts it
    /// again at resume.
    public func haltPIT(_ pit: [UInt8]) throws(KVMError) {
        guard pit.count == InKernelDevicesSnapshot.pitSize else { throw .stateRefused("PIT state size") }
        var state = kvm_pit_state2()
        withUnsafeMutableBytes(of: &state) { $0.copyBytes(from: pit) }
        state.channels.0.mode = 5
        try Ioctl.call(fd, .setPIT2, &state)
    }

    private func irqChip(_ id: UInt32) throws(KVMError) -> [UInt8] {
        try Ioctl.read(fd, .getIRQChip, size: InKernelDevicesSnapshot.irqChipSize) { buffer in
            buffer.storeBytes(of: id, as: UInt32.self)
        }
    }

    /// The guest's kvmclock, in nanoseconds (KVM_GET_CLOCK).
    public func clock() throws(KVMError) -> UInt64 {
        var data = kvm_clock_data()
        try Ioctl.call(fd, .getClock, &data)
        return data.clock
    }

    /// Sets the kvmclock (KVM_SET_CLOCK): with the value read at pause, the
    /// guest sees no time pass while paused.
    public func setClock(_ nanoseconds: UInt64) throws(KVMError) {
        var data = kvm_clock_data()
        data.clock = nanoseconds
        try Ioctl.call(fd, .setClock, &data)
    }
}

extension InKernelDevicesSnapshot {
    /// Why this state cannot be loaded, or nil: sizes and chip ids.
    public var problem: String? {
        for (name, bytes, chip) in [("PIC master", picMaster, KVMVirtualMachine.picMasterChip),
                                    ("PIC slave", picSlave, KVMVirtualMachine.picSlaveChip),
                                    ("IOAPIC", ioapic, KVMVirtualMachine.ioapicChip)] {
            guard bytes.count == Self.irqChipSize else { return "\(name) state has \(bytes.count) bytes, not \(Self.irqChipSize)" }
            let id = bytes.withUnsafeBytes { $0.load(as: UInt32.self) }
            guard id == chip else { return "\(name) state names chip \(id), not \(chip)" }
        }
        guard pit.count == Self.pitSize else { return "PIT state has \(pit.count) bytes, not \(Self.pitSize)" }
        return nil
    }
}
