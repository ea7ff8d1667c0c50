internal import CKVM

/// Every KVM ioctl this VMM issues, with its request number. The seccomp
/// allowlist of vmmd admits exactly these, one rule per request, so the set
/// of things a compromised device model could ask of KVM is this list.
public enum KVMIoctl: String, CaseIterable, Sendable {
    case getAPIVersion = "KVM_GET_API_VERSION"
    case createVM = "KVM_CREATE_VM"
    case checkExtension = "KVM_CHECK_EXTENSION"
    case getVcpuMmapSize = "KVM_GET_VCPU_MMAP_SIZE"
    case getSupportedCPUID = "KVM_GET_SUPPORTED_CPUID"
    case createVcpu = "KVM_CREATE_VCPU"
    case setUserMemoryRegion = "KVM_SET_USER_MEMORY_REGION"
    case setTSSAddress = "KVM_SET_TSS_ADDR"
    case setIdentityMapAddress = "KVM_SET_IDENTITY_MAP_ADDR"
    case createIRQChip = "KVM_CREATE_IRQCHIP"
    case createPIT2 = "KVM_CREATE_PIT2"
    case irqLine = "KVM_IRQ_LINE"
    case ioeventfd = "KVM_IOEVENTFD"
    case run = "KVM_RUN"
    case getRegisters = "KVM_GET_REGS"
    case setRegisters = "KVM_SET_REGS"
    case getSpecialRegisters = "KVM_GET_SREGS"
    case setSpecialRegisters = "KVM_SET_SREGS"
    case setCPUID2 = "KVM_SET_CPUID2"

    /// The ioctl's name as <linux/kvm.h> spells it.
    public var name: String { rawValue }

    /// The request number (the ioctl's second argument).
    public var number: UInt {
        switch self {
        case .getAPIVersion: return colo_kvm_get_api_version
        case .createVM: return colo_kvm_create_vm
        case .checkExtension: return colo_kvm_check_extension
        case .getVcpuMmapSize: return colo_kvm_get_vcpu_mmap_size
        case .getSupportedCPUID: return colo_kvm_get_supported_cpuid
        case .createVcpu: return colo_kvm_create_vcpu
        case .setUserMemoryRegion: return colo_kvm_set_user_memory_region
        case .setTSSAddress: return colo_kvm_set_tss_addr
        case .setIdentityMapAddress: return colo_kvm_set_identity_map_addr
        case .createIRQChip: return colo_kvm_create_irqchip
        case .createPIT2: return colo_kvm_create_pit2
        case .irqLine: return colo_kvm_irq_line
        case .ioeventfd: return colo_kvm_ioeventfd
        case .run: return colo_kvm_run
        case .getRegisters: return colo_kvm_get_regs
        case .setRegisters: return colo_kvm_set_regs
        case .getSpecialRegisters: return colo_kvm_get_sregs
        case .setSpecialRegisters: return colo_kvm_set_sregs
        case .setCPUID2: return colo_kvm_set_cpuid2
        }
    }
}
