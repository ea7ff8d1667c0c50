/// The few ACPI Machine Language encodings the DSDT needs (ACPI 6.5,
/// chapter 20): named objects, packages, integers, a scope and a device.
/// Each function returns the encoded term.
enum AML {
    static let zeroOp: UInt8 = 0x00, oneOp: UInt8 = 0x01
    static let bytePrefix: UInt8 = 0x0A, wordPrefix: UInt8 = 0x0B
    static let dwordPrefix: UInt8 = 0x0C, qwordPrefix: UInt8 = 0x0E
    static let nameOp: UInt8 = 0x08, scopeOp: UInt8 = 0x10, packageOp: UInt8 = 0x12
    static let extendedOpPrefix: UInt8 = 0x5B, deviceOp: UInt8 = 0x82
    static let rootChar: UInt8 = 0x5C

    /// A name segment or a rooted path of segments ("\_SB_"), each padded
    /// to four characters with '_'. Names come from this file only.
    static func name(_ path: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = Substring(path)
        if rest.first == "\\" {
            bytes.append(rootChar)
            rest = rest.dropFirst()
        }
        let segments = rest.split(separator: ".")
        precondition(!segments.isEmpty && segments.count <= 2, "AML name \(path)")
        if segments.count == 2 { bytes.append(0x2E) }      // DualNamePrefix
        for segment in segments {
            precondition(segment.count <= 4, "AML name segment \(segment)")
            bytes += Array(segment.utf8) + [UInt8](repeating: UInt8(ascii: "_"), count: 4 - segment.count)
        }
        return bytes
    }

    /// The smallest encoding of `value`.
    static func integer(_ value: UInt64) -> [UInt8] {
        switch value {
        case 0: return [zeroOp]
        case 1: return [oneOp]
        case ...0xFF: return [bytePrefix, UInt8(value)]
        case ...0xFFFF: return [wordPrefix] + littleEndian(UInt16(value))
        case ...0xFFFF_FFFF: return [dwordPrefix] + littleEndian(UInt32(value))
        default: return [qwordPrefix] + littleEndian(value)
        }
    }

    /// A DWord constant even when smaller would do (EISA IDs, _PRT addresses).
    static func dword(_ value: UInt32) -> [UInt8] {
        [dwordPrefix] + littleEndian(value)
    }

    /// Name(path, object).
    static func named(_ path: String, _ object: [UInt8]) -> [UInt8] {
        [nameOp] + name(path) + object
    }

    /// Package(){ elements }.
    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        precondition(elements.count <= 0xFF, "AML package of \(elements.count) elements")
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [packageOp] + packageLength(body.count) + body
    }

    static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = name(path) + terms.flatMap { $0 }
        return [scopeOp] + packageLength(body.count) + body
    }

    static func device(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = name(path) + terms.flatMap { $0 }
        return [extendedOpPrefix, deviceOp] + packageLength(body.count) + body
    }

    /// EisaId("PNP0A03"): three compressed letters and four hex digits.
    static func eisaID(_ id: String) -> [UInt8] {
        let characters = Array(id.utf8)
        precondition(characters.count == 7, "EISA ID \(id)")
        let letters = characters[0..<3].map { UInt32($0 - 0x40) & 0x1F }
        let digits = characters[3..<7].map { UInt32(Int(String(UnicodeScalar($0)), radix: 16)!) }
        let value = letters[0] << 26 | letters[1] << 21 | letters[2] << 16
            | digits[0] << 12 | digits[1] << 8 | digits[2] << 4 | digits[3]
        return dword(value.byteSwapped)
    }

    /// PkgLength for `count` bytes that follow it: the encoding counts its
    /// own bytes (one byte up to 63 in all, else a lead byte and 1-3 more).
    static func packageLength(_ count: Int) -> [UInt8] {
        if count + 1 <= 0x3F { return [UInt8(count + 1)] }
        for extra in 1...3 {
            let total = count + 1 + extra
            if total < 1 << (4 + 8 * extra) {
                var bytes = [UInt8(extra << 6 | total & 0x0F)]
                for index in 0..<extra { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * index))) }
                return bytes
            }
        }
        preconditionFailure("AML package of \(count) bytes")
    }
}
