/// The standard library's withUnsafe*Bytes rethrow untyped errors; these
/// keep RAMStreamError typed through the closure.
extension Array where Element == UInt8 {
    @inline(__always)
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws(RAMStreamError) -> R) throws(RAMStreamError) -> R {
        let result: Result<R, RAMStreamError> = withUnsafeBytes { raw in
            do throws(RAMStreamError) { return .success(try body(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    @inline(__always)
    mutating func withMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws(RAMStreamError) -> R)
        throws(RAMStreamError) -> R {
        let result: Result<R, RAMStreamError> = withUnsafeMutableBytes { raw in
            do throws(RAMStreamError) { return .success(try body(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
