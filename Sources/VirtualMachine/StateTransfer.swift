import ColoProtocol
import Devices
import Foundation
import KVM

/// Saving a paused VM's state and loading one into a paused VM (of the same
/// shape: RAM size, vCPUs, devices). RAM is not part of it: it moves
/// through the RAM memfd.
///
/// Load order: device models first (they drive their interrupt lines to
/// match, so KVM knows who holds each line), then the in-kernel PIC pair,
/// IOAPIC and PIT (overwriting whatever that delivered), then each vCPU
/// (its LAPIC last but for the TSC deadline), then the clocks the VM
/// resumes with.
extension VirtualMachine {
    var virtioDevices: [(slot: Int, transport: VirtioPciTransport)] {
        [net.map { (Self.netSlot, $0.transport) }, block.map { (Self.blockSlot, $0.transport) }].compactMap { $0 }
    }

    /// The paused VM's whole state as a blob (StateBlob).
    public func saveState() throws(VMStateError) -> [UInt8] {
        try pauseState.lock.withLock { () throws(VMStateError) -> [UInt8] in
            guard pauseState.paused else { throw .notPaused }
            guard hasRun || !isIncoming || pauseState.loaded else {
                throw .notRunning("the VM prepared for incoming state has no state yet")
            }
            guard transports.allSatisfy(\.isQuiet) else { throw .devicesBusy("block requests in flight") }
            var saved = ColoVmSavedState()
            saved.memoryBytes = memory.size
            do {
                let devices = try kvm.inKernelDevices()
                saved.machine.picMaster = Data(devices.picMaster)
                saved.machine.picSlave = Data(devices.picSlave)
                saved.machine.ioapic = Data(devices.ioapic)
                saved.machine.pit = Data(pauseState.pit)
                saved.machine.kvmclockNs = pauseState.clock
                let msrIndexes = try savedMSRIndexes()
                let extendedStateSize = kvmDevice.extendedStateSize
                for (index, runner) in vcpus.enumerated() {
                    var snapshot = try runner.vcpu.snapshot(msrIndexes: msrIndexes, extendedStateSize: extendedStateSize)
                    snapshot.timeStampCounter = pauseState.timeStampCounters[index]
                    saved.vcpus.append(ColoVcpuSavedState(snapshot, id: runner.vcpu.id))
                }
            } catch {
                throw .kvm("saving state: \(error)")
            }
            saved.serial = serial.savedState
            saved.virtio = virtioDevices.map { $0.transport.savedState(slot: $0.slot) }
            do {
                return try StateBlob.encode(saved)
            } catch {
                throw .badState("\(error)")
            }
        }
    }

    /// MSRs KVM lists as savable that the vCPUs read (found once).
    private func savedMSRIndexes() throws(KVMError) -> [UInt32] {
        if let known = pauseState.msrIndexes { return known }
        let readable = vcpus[0].vcpu.readableMSRs(try kvmDevice.savableMSRIndexes())
        pauseState.msrIndexes = readable
        return readable
    }

    /// Loads a blob into the paused VM. Everything is checked before
    /// anything changes: a refused blob leaves the VM as it was. With
    /// `checkOnly` nothing changes at all (a COLO secondary checks a
    /// checkpoint's state before its RAM is overwritten).
    public func loadState(_ blob: [UInt8], checkOnly: Bool = false) throws(VMStateError) {
        try pauseState.lock.withLock { () throws(VMStateError) in
            guard pauseState.paused else { throw .notPaused }
            guard transports.allSatisfy(\.isQuiet) else { throw .devicesBusy("block requests in flight") }
            let saved: ColoVmSavedState
            do {
                saved = try StateBlob.decode(blob)
            } catch {
                throw .badState("\(error)")
            }
            let (machine, snapshots) = try check(saved)
            if checkOnly { return }
            do {
                serial.load(saved.serial)
                for ((_, transport), device) in zip(virtioDevices, saved.virtio) { transport.load(device) }
                try kvm.restore(machine)
                for (runner, snapshot) in zip(vcpus, snapshots) { try runner.vcpu.restore(snapshot) }
            } catch {
                throw .kvm("loading state: \(error)")
            }
            pauseState.clock = saved.machine.kvmclockNs
            pauseState.pit = machine.pit
            pauseState.timeStampCounters = snapshots.map { $0.timeStampCounter ?? 0 }
            pauseState.loaded = true
        }
    }

    /// Whether `saved` fits this VM; the KVM-level parts, decoded.
    private func check(_ saved: ColoVmSavedState) throws(VMStateError)
        -> (InKernelDevicesSnapshot, [VcpuSnapshot]) {
        guard saved.memoryBytes == memory.size else {
            throw .badState("saved with \(saved.memoryBytes) bytes of RAM; this VM has \(memory.size)")
        }
        guard saved.vcpus.count == vcpus.count else {
            throw .badState("saved with \(saved.vcpus.count) vCPUs; this VM has \(vcpus.count)")
        }
        var machine = InKernelDevicesSnapshot()
        machine.picMaster = [UInt8](saved.machine.picMaster)
        machine.picSlave = [UInt8](saved.machine.picSlave)
        machine.ioapic = [UInt8](saved.machine.ioapic)
        machine.pit = [UInt8](saved.machine.pit)
        if let problem = machine.problem { throw .badState(problem) }
        let extendedStateSize = kvmDevice.extendedStateSize
        var snapshots: [VcpuSnapshot] = []
        for (index, (vcpu, runner)) in zip(saved.vcpus, vcpus).enumerated() {
            guard vcpu.id == runner.vcpu.id else { throw .badState("vCPU \(index) saved as id \(vcpu.id)") }
            let snapshot = VcpuSnapshot(vcpu)
            if let problem = snapshot.problem(extendedStateSize: extendedStateSize) {
                throw .badState("vCPU \(vcpu.id): \(problem)")
            }
            let frequency = (try? runner.vcpu.tscKilohertz()) ?? 0
            guard snapshot.tscKilohertz == frequency else {
                throw .badState("vCPU \(vcpu.id): saved with a TSC of \(snapshot.tscKilohertz) kHz; this host's runs at \(frequency) kHz")
            }
            snapshots.append(snapshot)
        }
        if let problem = Serial8250.problem(loading: saved.serial) { throw .badState(problem) }
        let devices = virtioDevices
        guard saved.virtio.count == devices.count else {
            throw .badState("saved with \(saved.virtio.count) virtio devices; this VM has \(devices.count)")
        }
        for ((slot, transport), device) in zip(devices, saved.virtio) {
            if let problem = transport.problem(loading: device, slot: slot) { throw .badState(problem) }
        }
        return (machine, snapshots)
    }
}

extension ColoVcpuSavedState {
    init(_ snapshot: VcpuSnapshot, id: UInt32) {
        self.init()
        self.id = id
        mpState = snapshot.multiprocessingState
        regs = Data(snapshot.registers)
        sregs = Data(snapshot.specialRegisters)
        xsave = Data(snapshot.extendedState)
        xcrs = Data(snapshot.extendedControlRegisters)
        msrs = snapshot.msrs.map { msr in
            var message = ColoModelSpecificRegister()
            message.index = msr.index
            message.value = msr.value
            return message
        }
        lapic = Data(snapshot.localAPIC)
        vcpuEvents = Data(snapshot.events)
        debugRegisters = Data(snapshot.debugRegisters)
        tscKhz = snapshot.tscKilohertz
    }
}

extension VcpuSnapshot {
    init(_ saved: ColoVcpuSavedState) {
        self.init()
        multiprocessingState = saved.mpState
        registers = [UInt8](saved.regs)
        specialRegisters = [UInt8](saved.sregs)
        extendedState = [UInt8](saved.xsave)
        extendedControlRegisters = [UInt8](saved.xcrs)
        msrs = saved.msrs.map { ModelSpecificRegister(index: $0.index, value: $0.value) }
        localAPIC = [UInt8](saved.lapic)
        events = [UInt8](saved.vcpuEvents)
        debugRegisters = [UInt8](saved.debugRegisters)
        tscKilohertz = saved.tscKhz
    }

    /// Why KVM could not take this state, or nil: structure sizes.
    func problem(extendedStateSize: Int) -> String? {
        let sizes: [(String, Int, Int)] = [
            ("regs", registers.count, Self.registersSize), ("sregs", specialRegisters.count, Self.specialRegistersSize),
            ("xsave", extendedState.count, extendedStateSize),
            ("xcrs", extendedControlRegisters.count, Self.extendedControlRegistersSize),
            ("lapic", localAPIC.count, Self.localAPICSize), ("vcpu_events", events.count, Self.eventsSize),
            ("debug_registers", debugRegisters.count, Self.debugRegistersSize),
        ]
        for (name, have, want) in sizes where have != want { return "\(name) has \(have) bytes, not \(want)" }
        guard multiprocessingState <= 8 else { return "MP state \(multiprocessingState) is unknown" }
        return nil
    }
}
