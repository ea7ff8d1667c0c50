internal import CKVM
import Glibc
import SystemPackage

/// A KVM VM fd: its memory slots, in-kernel interrupt controllers and
/// timer, interrupt lines and event fds. The VM-level ioctls are safe to
/// issue from any thread (the kernel serialises them), so device threads
/// raise interrupts through this directly.
public final class KVMVirtualMachine: Sendable {
    public let fd: FileDescriptor
    private let vcpuMmapSize: Int

    init(fd: FileDescriptor, vcpuMmapSize: Int) {
        self.fd = fd
        self.vcpuMmapSize = vcpuMmapSize
    }

    deinit {
        try? fd.close()
    }

    /// Maps `size` bytes at `hostAddress` as guest-physical memory from
    /// `guestAddress` in memory slot `slot`. With `logDirtyPages`, KVM
    /// records which pages the guest writes (read with the dirty log).
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64,
                                hostAddress: UnsafeMutableRawPointer, logDirtyPages: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: logDirtyPages ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0,
            guest_phys_addr: guestAddress, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: hostAddress)))
        try Ioctl.call(fd, .setUserMemoryRegion, &region)
    }

    /// Three pages of guest-physical space (above RAM) that Intel VT needs
    /// for real-mode emulation's TSS; must be set before vCPUs exist.
    public func setTSSAddress(_ address: UInt32) throws(KVMError) {
        try Ioctl.call(fd, .setTSSAddress, value: Int32(bitPattern: address))
    }

    /// One page of guest-physical space (above RAM) for Intel VT's identity
    /// page table in real mode; must be set before vCPUs exist.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        try Ioctl.call(fd, .setIdentityMapAddress, &value)
    }

    /// The in-kernel 8259 pair (with ELCR), IOAPIC and per-vCPU local
    /// APICs: interrupt delivery, EOIs and HLT never leave the kernel.
    public func createInterruptController() throws(KVMError) {
        try Ioctl.call(fd, .createIRQChip)
    }

    /// The in-kernel 8254 PIT on IRQ 0; port 0x61 (speaker gate) answered
    /// in the kernel too.
    public func createProgrammableIntervalTimer() throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try Ioctl.call(fd, .createPIT2, &config)
    }

    /// Drives interrupt line `gsi` (an ISA IRQ: the PIC input and the
    /// IOAPIC pin of the same number) high or low.
    public func setInterruptLine(_ gsi: UInt32, high: Bool) throws(KVMError) {
        var level = colo_kvm_irq_level(gsi, high ? 1 : 0)
        try Ioctl.call(fd, .irqLine, &level)
    }

    /// Makes a guest write of `length` bytes to I/O port `port` (only of
    /// value `matching`, when given) signal `eventfd` inside the kernel
    /// instead of exiting to this process.
    public func attachIOEventFD(_ eventfd: FileDescriptor, port: UInt16, length: UInt32,
                                matching value: UInt64?) throws(KVMError) {
        var request = ioeventfdRequest(eventfd, port: port, length: length, matching: value)
        try Ioctl.call(fd, .ioeventfd, &request)
    }

    /// Undoes `attachIOEventFD` with the same arguments.
    public func detachIOEventFD(_ eventfd: FileDescriptor, port: UInt16, length: UInt32,
                                matching value: UInt64?) throws(KVMError) {
        var request = ioeventfdRequest(eventfd, port: port, length: length, matching: value)
        request.flags |= colo_kvm_ioeventfd_flag_deassign
        try Ioctl.call(fd, .ioeventfd, &request)
    }

    private func ioeventfdRequest(_ eventfd: FileDescriptor, port: UInt16, length: UInt32,
                                  matching value: UInt64?) -> kvm_ioeventfd {
        var request = kvm_ioeventfd()
        request.addr = UInt64(port)
        request.len = length
        request.fd = eventfd.rawValue
        request.flags = colo_kvm_ioeventfd_flag_pio
        if let value {
            request.datamatch = value
            request.flags |= colo_kvm_ioeventfd_flag_datamatch
        }
        return request
    }

    /// Creates vCPU `id` and maps its kvm_run page.
    public func createVcpu(id: UInt32) throws(KVMError) -> KVMVcpu {
        let raw = try Ioctl.call(fd, .createVcpu, value: Int32(id))
        let vcpuFD = FileDescriptor(rawValue: raw)
        let mapping = mmap(nil, vcpuMmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, raw, 0)
        guard let mapping, mapping != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            try? vcpuFD.close()
            throw .mapRunPage(error)
        }
        return KVMVcpu(id: id, fd: vcpuFD, run: mapping, runSize: vcpuMmapSize)
    }
}
