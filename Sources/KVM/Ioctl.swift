import Glibc
import SystemPackage

/// The one place KVM ioctls are issued: retries EINTR (except for KVM_RUN,
/// whose EINTR is how a vCPU is kicked out) and turns failures into typed
/// errors naming the request.
enum Ioctl {
    /// An ioctl whose argument is a pointer; returns the (non-negative) result.
    @discardableResult
    static func call(_ fd: FileDescriptor, _ request: KVMIoctl,
                     _ argument: UnsafeMutableRawPointer) throws(KVMError) -> Int32 {
        while true {
            let result = ioctl(fd.rawValue, request.number, argument)
            if result >= 0 { return result }
            if errno == EINTR { continue }
            throw .ioctl(request, Errno(rawValue: errno))
        }
    }

    /// An ioctl whose argument is an integer (or unused).
    @discardableResult
    static func call(_ fd: FileDescriptor, _ request: KVMIoctl, value: Int32 = 0) throws(KVMError) -> Int32 {
        while true {
            let result = ioctl(fd.rawValue, request.number, value)
            if result >= 0 { return result }
            if errno == EINTR { continue }
            throw .ioctl(request, Errno(rawValue: errno))
        }
    }

    /// An ioctl taking a struct by pointer, passed in (and read back).
    @discardableResult
    static func call<T>(_ fd: FileDescriptor, _ request: KVMIoctl, _ value: inout T) throws(KVMError) -> Int32 {
        var outcome: Result<Int32, KVMError> = .success(0)
        withUnsafeMutableBytes(of: &value) { bytes in
            do throws(KVMError) {
                outcome = .success(try call(fd, request, bytes.baseAddress!))
            } catch {
                outcome = .failure(error)
            }
        }
        return try outcome.get()
    }
}
