// libFuzzer entry for the NBD parsers (scripts/fuzz-nbd.sh builds it with
// `swiftc -sanitize=fuzzer` from Sources/NBD's dependency-free files).
// The first byte picks the parser; the rest is its input. Besides not
// crashing, a request the server would serve must lie inside the export.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNBDParsers(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let selector = data[0]
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch selector % 4 {
    case 0:
        guard let request = try? NBDRequest.parse(bytes) else { return 0 }
        precondition(request.encoded() == Array(bytes.prefix(NBDRequest.size)), "header does not round-trip")
        let flags = bytes.count > NBDRequest.size ? bytes[NBDRequest.size] : 0
        let terms = NBDExportTerms(size: UInt64(flags) << 20 | 512, readOnly: flags & 1 != 0, flush: flags & 2 != 0,
                                   trim: flags & 4 != 0, writeZeroes: flags & 8 != 0,
                                   structuredReplies: flags & 16 != 0, blockStatus: flags & 32 != 0)
        switch request.disposition(under: terms) {
        case .serve(let command):
            if command != .flush {
                precondition(request.length > 0 && request.offset <= terms.size
                             && UInt64(request.length) <= terms.size - request.offset, "served out of range")
            }
            if command == .read || command == .write {
                precondition(request.length <= NBDLimits.maxPayload, "served an oversized payload")
            }
            if command == .write || command == .trim || command == .writeZeroes {
                precondition(!terms.readOnly, "wrote to a read-only export")
            }
        case .reject(_, let discard, _):
            precondition(discard <= NBDLimits.maxPayload, "discarding an unbounded payload")
        case .rejectAndClose, .disconnect:
            break
        }
    case 1:
        _ = try? NBDOptionHeader.parse(bytes)
    case 2:
        if let request = try? NBDInfoRequest.parse(bytes) {
            precondition(request.exportName.utf8.count <= NBDLimits.maxNameLength)
        }
    default:
        if let request = try? NBDMetaContextRequest.parse(bytes) {
            precondition(request.encoded() == bytes, "meta context request does not round-trip")
        }
    }
    return 0
}
