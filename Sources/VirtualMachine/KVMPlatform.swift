import Devices
import KVM
import SystemPackage

/// An ISA interrupt line driven through KVM_IRQ_LINE (the in-kernel PIC
/// and IOAPIC input of the same number).
///
/// Raising it from a thread other than a vCPU's also wakes the vCPUs:
/// this machine's KVM (a software emulator, DESIGN.md section 9) leaves a
/// halted vCPU asleep until its next host timer tick (up to 4 ms) when an
/// interrupt comes from another thread, and a guest that halts to wait for
/// a block completion or a frame paid that on every one.
struct KVMInterruptLine: InterruptLine {
    let vm: KVMVirtualMachine
    let gsi: UInt32
    let vcpus: [VcpuRunner]

    func set(high: Bool) {
        // Fails only for a GSI the irqchip lacks: ours are ISA lines it has.
        try? vm.setInterruptLine(gsi, high: high)
        if high { vcpus.forEach { $0.wakeFromHalt() } }
    }
}

/// Virtqueue notifications as KVM ioeventfds on the notify register.
struct KVMNotifyRegistrar: NotifyEventRegistrar {
    let vm: KVMVirtualMachine

    func attach(_ eventfd: FileDescriptor, port: UInt16, value: UInt16) -> Bool {
        (try? vm.attachIOEventFD(eventfd, port: port, length: 2, matching: UInt64(value))) != nil
    }

    func detach(_ eventfd: FileDescriptor, port: UInt16, value: UInt16) {
        try? vm.detachIOEventFD(eventfd, port: port, length: 2, matching: UInt64(value))
    }
}
