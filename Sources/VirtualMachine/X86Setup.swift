import KVM
import Loaders

/// Turns a loader's entry state into vCPU registers, and KVM's supported
/// CPUID into what each vCPU presents.
enum X86Setup {
    static let cr0ProtectionEnable: UInt64 = 1 << 0, cr0ExtensionType: UInt64 = 1 << 4
    static let cr0Paging: UInt64 = 1 << 31
    static let cr4PhysicalAddressExtension: UInt64 = 1 << 5
    static let eferLongModeEnable: UInt64 = 1 << 8, eferLongModeActive: UInt64 = 1 << 10

    /// Sets the boot vCPU's registers for `entry`.
    static func apply(_ entry: BootEntry, to vcpu: KVMVcpu) throws(KVMError) {
        var special = try vcpu.specialRegisters()
        switch entry.mode {
        case .flatProtected32:
            special.cs = .flat(selector: 0x08, code: true)
            let data = SegmentRegister.flat(selector: 0x10, code: false)
            special.ds = data; special.es = data; special.fs = data; special.gs = data; special.ss = data
            special.cr0 = cr0ProtectionEnable | cr0ExtensionType
            special.cr3 = 0
            special.cr4 = 0
            special.efer = 0
        case let .long64(root, gdtBase, gdtLimit, codeSelector, dataSelector):
            special.cs = .flat(selector: codeSelector, code: true, longMode: true)
            let data = SegmentRegister.flat(selector: dataSelector, code: false)
            special.ds = data; special.es = data; special.fs = data; special.gs = data; special.ss = data
            special.gdt = DescriptorTableRegister(base: gdtBase, limit: gdtLimit)
            special.cr0 = cr0ProtectionEnable | cr0ExtensionType | cr0Paging
            special.cr3 = root
            special.cr4 = cr4PhysicalAddressExtension
            special.efer = eferLongModeEnable | eferLongModeActive
        }
        try vcpu.setSpecialRegisters(special)
        var general = GeneralRegisters()
        general.rip = entry.instructionPointer
        general.rax = entry.rax
        general.rbx = entry.rbx
        general.rsi = entry.rsi
        try vcpu.setGeneralRegisters(general)
    }

    /// KVM's supported CPUID with this vCPU's APIC ID in leaf 1 (EBX
    /// 31:24) and the x2APIC topology leaves (0xB, 0x1F: EDX).
    static func cpuid(_ supported: [CPUIDEntry], vcpu id: UInt32) -> [CPUIDEntry] {
        supported.map { entry in
            var entry = entry
            switch entry.function {
            case 1:
                entry.ebx = (entry.ebx & 0x00FF_FFFF) | (id << 24)
            case 0xB, 0x1F:
                entry.edx = id
            default:
                break
            }
            return entry
        }
    }
}
