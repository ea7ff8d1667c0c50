import Devices
import KVM
import SystemPackage

/// An ISA interrupt line driven through KVM_IRQ_LINE (the in-kernel PIC
/// and IOAPIC input of the same number).
struct KVMInterruptLine: InterruptLine {
    let vm: KVMVirtualMachine
    let gsi: UInt32

    func set(high: Bool) {
        // Fails only for a GSI the irqchip lacks: ours are ISA lines it has.
        try? vm.setInterruptLine(gsi, high: high)
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
