internal import CKVM
import Glibc
import SystemPackage

/// How KVM reports the pages the guest wrote.
public enum DirtyLogMode: String, Sendable, CaseIterable {
    /// KVM_GET_DIRTY_LOG alone: reading the bitmap clears it and
    /// write-protects every page again.
    case getAndClear = "get"
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: reading leaves pages writable;
    /// KVM_CLEAR_DIRTY_LOG re-protects only the pages that were dirty, and
    /// turning logging on does not write-protect all of RAM at once.
    case manualClear = "clear"
}

extension KVMVirtualMachine {
    /// Whether KVM offers manual clearing (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
    public var supportsManualDirtyLogClear: Bool {
        ((try? Ioctl.call(fd, .checkExtension, value: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) ?? 0) > 0
    }

    /// Turns on manual clearing with every page initially dirty; must come
    /// before a slot's dirty logging is turned on.
    public func enableManualDirtyLogClear() throws(KVMError) {
        var request = kvm_enable_cap()
        request.cap = UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        request.args.0 = UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET)
        try Ioctl.call(fd, .enableCapability, &request)
    }

    /// Writes slot `slot`'s dirty bitmap (one bit per page, 64-bit words,
    /// ceil(pages / 64) of them) to `bitmap`. In get-and-clear mode this
    /// also clears it; in manual mode call `clearDirtyLog` with it.
    public func dirtyLog(slot: UInt32, into bitmap: UnsafeMutableRawPointer) throws(KVMError) {
        var request = colo_kvm_dirty_log_request(slot, bitmap)
        try Ioctl.call(fd, .getDirtyLog, &request)
    }

    /// Manual mode: write-protects again the pages set in `bitmap` (which
    /// covers the slot's `pages` pages from its first).
    public func clearDirtyLog(slot: UInt32, pages: UInt32, bitmap: UnsafeMutableRawPointer) throws(KVMError) {
        var request = colo_kvm_clear_dirty_log_request(slot, 0, pages, bitmap)
        try Ioctl.call(fd, .clearDirtyLog, &request)
    }
}
