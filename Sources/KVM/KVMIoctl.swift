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
    // Pause, dirty log, state save and restore.
    case getMSRIndexList = "KVM_GET_MSR_INDEX_LIST"
    case getIRQChip = "KVM_GET_IRQCHIP"
    case setIRQChip = "KVM_SET_IRQCHIP"
    case getPIT2 = "KVM_GET_PIT2"
    case setPIT2 = "KVM_SET_PIT2"
    case getClock = "KVM_GET_CLOCK"
    case setClock = "KVM_SET_CLOCK"
    case getDirtyLog = "KVM_GET_DIRTY_LOG"
    case clearDirtyLog = "KVM_CLEAR_DIRTY_LOG"
    case enableCapability = "KVM_ENABLE_CAP"
    case getMPState = "KVM_GET_MP_STATE"
    case setMPState = "KVM_SET_MP_STATE"
    case getXSave = "KVM_GET_XSAVE"
    case getXSave2 = "KVM_GET_XSAVE2"
    case setXSave = "KVM_SET_XSAVE"
    case getXCRs = "KVM_GET_XCRS"
    case setXCRs = "KVM_SET_XCRS"
    case getMSRs = "KVM_GET_MSRS"
    case setMSRs = "KVM_SET_MSRS"
    case getLAPIC = "KVM_GET_LAPIC"
    case setLAPIC = "KVM_SET_LAPIC"
    case getVcpuEvents = "KVM_GET_VCPU_EVENTS"
    case setVcpuEvents = "KVM_SET_VCPU_EVENTS"
    case getDebugRegisters = "KVM_GET_DEBUGREGS"
    case setDebugRegisters = "KVM_SET_DEBUGREGS"
    case getTSCFrequency = "KVM_GET_TSC_KHZ"

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
        case .getMSRIndexList: return colo_kvm_get_msr_index_list
        case .getIRQChip: return colo_kvm_get_irqchip
        case .setIRQChip: return colo_kvm_set_irqchip
        case .getPIT2: return colo_kvm_get_pit2
        case .setPIT2: return colo_kvm_set_pit2
        case .getClock: return colo_kvm_get_clock
        case .setClock: return colo_kvm_set_clock
        case .getDirtyLog: return colo_kvm_get_dirty_log
        case .clearDirtyLog: return colo_kvm_clear_dirty_log
        case .enableCapability: return colo_kvm_enable_cap
        case .getMPState: return colo_kvm_get_mp_state
        case .setMPState: return colo_kvm_set_mp_state
        case .getXSave: return colo_kvm_get_xsave
        case .getXSave2: return colo_kvm_get_xsave2
        case .setXSave: return colo_kvm_set_xsave
        case .getXCRs: return colo_kvm_get_xcrs
        case .setXCRs: return colo_kvm_set_xcrs
        case .getMSRs: return colo_kvm_get_msrs
        case .setMSRs: return colo_kvm_set_msrs
        case .getLAPIC: return colo_kvm_get_lapic
        case .setLAPIC: return colo_kvm_set_lapic
        case .getVcpuEvents: return colo_kvm_get_vcpu_events
        case .setVcpuEvents: return colo_kvm_set_vcpu_events
        case .getDebugRegisters: return colo_kvm_get_debugregs
        case .setDebugRegisters: return colo_kvm_set_debugregs
        case .getTSCFrequency: return colo_kvm_get_tsc_khz
        }
    }
}
