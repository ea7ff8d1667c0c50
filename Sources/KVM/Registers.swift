internal import CKVM

/// The general-purpose registers, instruction pointer and flags of a vCPU
/// (struct kvm_regs), as plain data.
public struct GeneralRegisters: Sendable, Equatable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is always set on x86.
    public var rflags: UInt64 = 0x2

    public init() {}

    init(_ value: kvm_regs) {
        rax = value.rax; rbx = value.rbx; rcx = value.rcx; rdx = value.rdx
        rsi = value.rsi; rdi = value.rdi; rsp = value.rsp; rbp = value.rbp
        r8 = value.r8; r9 = value.r9; r10 = value.r10; r11 = value.r11
        r12 = value.r12; r13 = value.r13; r14 = value.r14; r15 = value.r15
        rip = value.rip; rflags = value.rflags
    }

    var kvmValue: kvm_regs {
        kvm_regs(rax: rax, rbx: rbx, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, rsp: rsp, rbp: rbp,
                 r8: r8, r9: r9, r10: r10, r11: r11, r12: r12, r13: r13, r14: r14, r15: r15,
                 rip: rip, rflags: rflags)
    }
}

/// A segment register with its hidden descriptor cache (struct kvm_segment).
public struct SegmentRegister: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0
    public var selector: UInt16 = 0
    /// Descriptor type (e.g. 0xB execute/read accessed code, 0x3 read/write accessed data).
    public var type: UInt8 = 0
    public var present: Bool = false
    public var privilegeLevel: UInt8 = 0
    /// D/B: 32-bit default operand size.
    public var defaultSize32: Bool = false
    /// S: a code or data segment (not a system one).
    public var codeOrData: Bool = false
    /// L: 64-bit code segment.
    public var longMode: Bool = false
    /// G: limit counted in 4 KiB units.
    public var granularity4K: Bool = false
    public var unusable: Bool = false

    public init() {}

    /// A flat 4 GiB code (execute/read) or data (read/write) segment.
    public static func flat(selector: UInt16, code: Bool, longMode: Bool = false) -> SegmentRegister {
        var segment = SegmentRegister()
        segment.limit = 0xFFFF_FFFF
        segment.selector = selector
        segment.type = code ? 0xB : 0x3
        segment.present = true
        segment.defaultSize32 = !longMode
        segment.codeOrData = true
        segment.longMode = longMode && code
        segment.granularity4K = true
        return segment
    }

    init(_ value: kvm_segment) {
        base = value.base; limit = value.limit; selector = value.selector; type = value.type
        present = value.present != 0; privilegeLevel = value.dpl; defaultSize32 = value.db != 0
        codeOrData = value.s != 0; longMode = value.l != 0; granularity4K = value.g != 0
        unusable = value.unusable != 0
    }

    var kvmValue: kvm_segment {
        var value = kvm_segment()
        value.base = base; value.limit = limit; value.selector = selector; value.type = type
        value.present = present ? 1 : 0; value.dpl = privilegeLevel; value.db = defaultSize32 ? 1 : 0
        value.s = codeOrData ? 1 : 0; value.l = longMode ? 1 : 0; value.g = granularity4K ? 1 : 0
        value.unusable = unusable ? 1 : 0
        return value
    }
}

/// GDTR or IDTR.
public struct DescriptorTableRegister: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0

    public init(base: UInt64 = 0, limit: UInt16 = 0) {
        self.base = base
        self.limit = limit
    }
}

/// Segment, descriptor-table and control registers of a vCPU (struct
/// kvm_sregs without its interrupt bitmap, which KVM keeps).
public struct SpecialRegisters: Sendable, Equatable {
    public var cs = SegmentRegister(), ds = SegmentRegister(), es = SegmentRegister()
    public var fs = SegmentRegister(), gs = SegmentRegister(), ss = SegmentRegister()
    public var tr = SegmentRegister(), ldt = SegmentRegister()
    public var gdt = DescriptorTableRegister(), idt = DescriptorTableRegister()
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0

    public init() {}

    init(_ value: kvm_sregs) {
        cs = SegmentRegister(value.cs); ds = SegmentRegister(value.ds); es = SegmentRegister(value.es)
        fs = SegmentRegister(value.fs); gs = SegmentRegister(value.gs); ss = SegmentRegister(value.ss)
        tr = SegmentRegister(value.tr); ldt = SegmentRegister(value.ldt)
        gdt = DescriptorTableRegister(base: value.gdt.base, limit: value.gdt.limit)
        idt = DescriptorTableRegister(base: value.idt.base, limit: value.idt.limit)
        cr0 = value.cr0; cr2 = value.cr2; cr3 = value.cr3; cr4 = value.cr4; cr8 = value.cr8
        efer = value.efer; apicBase = value.apic_base
    }

    func apply(to value: inout kvm_sregs) {
        value.cs = cs.kvmValue; value.ds = ds.kvmValue; value.es = es.kvmValue
        value.fs = fs.kvmValue; value.gs = gs.kvmValue; value.ss = ss.kvmValue
        value.tr = tr.kvmValue; value.ldt = ldt.kvmValue
        value.gdt.base = gdt.base; value.gdt.limit = gdt.limit
        value.idt.base = idt.base; value.idt.limit = idt.limit
        value.cr0 = cr0; value.cr2 = cr2; value.cr3 = cr3; value.cr4 = cr4; value.cr8 = cr8
        value.efer = efer; value.apic_base = apicBase
    }
}
