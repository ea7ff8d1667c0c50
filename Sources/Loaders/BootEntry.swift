/// The CPU state a loaded image expects on entry, independent of KVM: the
/// VMM turns it into vCPU registers.
public struct BootEntry: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        /// 32-bit protected mode, paging off, flat 4 GiB code and data
        /// segments (the multiboot entry state).
        case flatProtected32
        /// 64-bit long mode with the loader's identity-mapping page tables
        /// at `pageTableRoot` (CR3) and its GDT (the Linux 64-bit entry).
        case long64(pageTableRoot: UInt64, gdtBase: UInt64, gdtLimit: UInt16,
                    codeSelector: UInt16, dataSelector: UInt16)
    }

    public var mode: Mode
    public var instructionPointer: UInt64
    public var rax: UInt64 = 0
    public var rbx: UInt64 = 0
    public var rsi: UInt64 = 0

    public init(mode: Mode, instructionPointer: UInt64, rax: UInt64 = 0, rbx: UInt64 = 0, rsi: UInt64 = 0) {
        self.mode = mode
        self.instructionPointer = instructionPointer
        self.rax = rax
        self.rbx = rbx
        self.rsi = rsi
    }
}
