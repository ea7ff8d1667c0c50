import GuestMemory

/// The physical memory map a PC firmware would report (e820 / multiboot
/// mmap): RAM below 640 KiB minus the EBDA, the legacy video and BIOS
/// holes, RAM from 1 MiB, and RAM above 4 GiB when there is more.
public struct MemoryMap: Sendable, Equatable {
    public enum Kind: UInt32, Sendable {
        case usable = 1
        case reserved = 2
    }

    public struct Entry: Sendable, Equatable {
        public var start: UInt64
        public var size: UInt64
        public var kind: Kind
        public var end: UInt64 { start + size }
    }

    /// Where the extended BIOS data area would start (the top of low RAM).
    public static let lowRAMEnd: UInt64 = 0x9_FC00
    public static let highRAMStart: UInt64 = 0x10_0000

    public let entries: [Entry]

    /// The map of `memory`, which must hold more than 1 MiB.
    public init(_ memory: GuestMemory) throws(LoaderError) {
        guard let low = memory.regions.first, low.size > Self.highRAMStart else {
            throw .doesNotFit("guest RAM of \(memory.size) bytes: at least 2 MiB are needed")
        }
        var entries = [
            Entry(start: 0, size: Self.lowRAMEnd, kind: .usable),
            Entry(start: Self.lowRAMEnd, size: 0xA_0000 - Self.lowRAMEnd, kind: .reserved),
            Entry(start: 0xF_0000, size: 0x1_0000, kind: .reserved),
            Entry(start: Self.highRAMStart, size: low.size - Self.highRAMStart, kind: .usable),
        ]
        for region in memory.regions.dropFirst() {
            entries.append(Entry(start: region.guestAddress, size: region.size, kind: .usable))
        }
        self.entries = entries
    }

    /// True when [start, start+size) lies inside one usable entry.
    public func isUsable(_ start: UInt64, size: UInt64) -> Bool {
        let (end, overflow) = start.addingReportingOverflow(size)
        return !overflow && entries.contains { $0.kind == .usable && start >= $0.start && end <= $0.end }
    }

    /// The end of usable RAM that starts at 1 MiB (below the PCI hole).
    public var endOfRAMBelow4G: UInt64 { entries[3].end }
}
