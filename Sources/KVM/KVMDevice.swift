internal import CKVM
import Glibc
import SystemPackage

/// The KVM subsystem: an open /dev/kvm. Opened once while the daemon may
/// still open files; VMs are created from it later, under the sandbox.
public final class KVMDevice: Sendable {
    public let fd: FileDescriptor
    /// Bytes to map of each vCPU fd (the kvm_run page and what follows it).
    let vcpuMmapSize: Int

    /// Opens `path` (normally /dev/kvm) and checks that it is KVM with the
    /// stable API and the capabilities this VMM needs.
    public convenience init(path: String = "/dev/kvm") throws(KVMError) {
        let raw = open(path, O_RDWR | O_CLOEXEC)
        guard raw >= 0 else { throw .cannotOpen(path: path, errno: Errno(rawValue: errno)) }
        try self.init(adopting: FileDescriptor(rawValue: raw))
    }

    /// Adopts an open fd (closed again if it is not usable KVM).
    public init(adopting fd: FileDescriptor) throws(KVMError) {
        self.fd = fd
        do throws(KVMError) {
            let version: Int32
            do {
                version = try Ioctl.call(fd, .getAPIVersion)
            } catch {
                if case .ioctl(_, let errno) = error { throw .notKVM(detail: "KVM_GET_API_VERSION: \(errno)") }
                throw error
            }
            guard version == KVM_API_VERSION else { throw .unsupportedAPIVersion(version) }
            for (capability, name) in Self.requiredCapabilities {
                guard try Ioctl.call(fd, .checkExtension, value: capability) > 0 else {
                    throw .missingCapability(name)
                }
            }
            vcpuMmapSize = Int(try Ioctl.call(fd, .getVcpuMmapSize))
        } catch {
            try? fd.close()
            throw error
        }
    }

    deinit {
        try? fd.close()
    }

    private static let requiredCapabilities: [(Int32, String)] = [
        (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
        (KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP (in-kernel PIC, IOAPIC, LAPIC)"),
        (KVM_CAP_PIT2, "KVM_CAP_PIT2 (in-kernel PIT)"),
        (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"),
        (KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"),
        (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT (prompt vCPU kicks)"),
        (KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"),
    ]

    /// The CPUID leaves KVM can present to a guest on this host.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let bytes = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(capacity)
            do {
                try Ioctl.call(fd, .getSupportedCPUID, buffer)
            } catch {
                // E2BIG: more leaves than room; try again with more.
                if case .ioctl(_, let code) = error, code.rawValue == E2BIG, capacity < 4096 {
                    capacity *= 2
                    continue
                }
                throw error
            }
            let count = Int(buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent)
            let entries = (buffer + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
            return (0..<count).map { CPUIDEntry(entries[$0]) }
        }
    }

    /// A new, empty VM (no memory, no vCPUs).
    public func createVirtualMachine() throws(KVMError) -> KVMVirtualMachine {
        let raw = try Ioctl.call(fd, .createVM, value: 0)
        return KVMVirtualMachine(fd: FileDescriptor(rawValue: raw), vcpuMmapSize: vcpuMmapSize)
    }
}

/// One CPUID leaf/subleaf as KVM describes it.
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    /// KVM_CPUID_FLAG_* (whether `index` matters).
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    init(_ entry: kvm_cpuid_entry2) {
        function = entry.function
        index = entry.index
        flags = entry.flags
        eax = entry.eax
        ebx = entry.ebx
        ecx = entry.ecx
        edx = entry.edx
    }

    var kvmEntry: kvm_cpuid_entry2 {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.index = index
        entry.flags = flags
        entry.eax = eax
        entry.ebx = ebx
        entry.ecx = ecx
        entry.edx = edx
        return entry
    }
}
