import BlockDevice
import Synchronization

/// A named device offered to NBD clients.
public struct NBDExport: Sendable {
    public let name: String
    public let description: String
    public let device: any BlockDevice
    /// Served read-only whatever the device allows.
    public let readOnly: Bool

    public init(name: String, description: String = "", device: any BlockDevice, readOnly: Bool = false) {
        self.name = name
        self.description = description
        self.device = device
        self.readOnly = readOnly
    }

    /// The transmission flags this export advertises.
    var transmissionFlags: UInt16 {
        let features = device.features
        var flags = NBDTransmissionFlag.hasFlags
        if readOnly || features.readOnly {
            flags |= NBDTransmissionFlag.readOnly
        } else {
            if features.fua { flags |= NBDTransmissionFlag.sendFUA }
            if features.trim { flags |= NBDTransmissionFlag.sendTrim }
            if features.writeZeroes { flags |= NBDTransmissionFlag.sendWriteZeroes }
        }
        if features.flush { flags |= NBDTransmissionFlag.sendFlush }
        return flags
    }
}

/// The exports one listener (or one handed-over connection) offers. Exports
/// come and go while clients are connected; a client keeps the export it
/// chose.
public final class NBDExportCatalog: Sendable {
    private let exports = Mutex<[String: NBDExport]>([:])
    /// What the empty name (the default export) means, if anything.
    private let defaultName = Mutex<String?>(nil)

    public init() {}

    public func add(_ export: NBDExport, asDefault: Bool = false) {
        exports.withLock { $0[export.name] = export }
        if asDefault { defaultName.withLock { $0 = export.name } }
    }

    public func remove(named name: String) {
        exports.withLock { _ = $0.removeValue(forKey: name) }
        defaultName.withLock { if $0 == name { $0 = nil } }
    }

    /// The export a client names; the empty name is the default export.
    public func export(named name: String) -> NBDExport? {
        let resolved: String? = name.isEmpty ? defaultName.withLock { $0 } : name
        guard let resolved else { return nil }
        return exports.withLock { $0[resolved] }
    }

    public var all: [NBDExport] {
        exports.withLock { Array($0.values) }.sorted { $0.name < $1.name }
    }
}
