import ArgumentParser
import DaemonRuntime
import Glibc
import KVM

/// `vmmd`: Runs the protected VM: owns /dev/kvm, guest RAM (a memfd) and the device models.
@main
struct VMMDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmmd",
        abstract: "Runs the protected VM: owns /dev/kvm, guest RAM (a memfd) and the device models.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    @Option(help: "The KVM device to open at start (before the sandbox).")
    var kvmDevice = "/dev/kvm"

    /// How a guest's virtqueue notification reaches its device. Exits are
    /// the default: the vCPU thread serves the queue itself (a frame is sent,
    /// a block request is on its way) with no thread hop, which measured
    /// faster here for a one-vCPU guest that waits for its I/O (see
    /// docs/PERFORMANCE.md); ioeventfds pay off when vCPUs have other work.
    enum NotifyPath: String, ExpressibleByArgument, CaseIterable {
        /// KVM ioeventfds: the notification signals the device thread inside the kernel.
        case eventfd
        /// Each notification exits to the vCPU thread, which serves the queue itself.
        case exit
    }

    @Option(help: "How virtqueue notifications reach the devices: exit or eventfd.")
    var virtioNotify: NotifyPath = .exit

    @Option(help: "How guest writes are logged: clear (KVM_CLEAR_DIRTY_LOG, manual protect) or get (KVM_GET_DIRTY_LOG).")
    var dirtyLog: DirtyLogMode = .manualClear

    @Option(help: ArgumentHelp(
        "A user (name or uid) that may have the guest RAM memfd; repeatable. Default: vmmd's own uid only.",
        valueName: "user"))
    var memoryUser: [String] = []

    func run() throws {
        let kvmDevice = kvmDevice
        let eventfds = virtioNotify == .eventfd
        let dirtyLog = dirtyLog
        var memoryUsers: Set<UInt32> = memoryUser.isEmpty ? [geteuid()] : []
        for name in memoryUser {
            guard let uid = UInt32(name) ?? getpwnam(name).map({ $0.pointee.pw_uid }) else {
                throw ValidationError("--memory-user \(name): no such user")
            }
            memoryUsers.insert(uid)
        }
        let allowedMemoryUsers = memoryUsers
        try DaemonHost.run(name: "vmmd", options: options, policy: seccompPolicy) { environment in
            let kvm = try KVMDevice(path: kvmDevice)
            return try VMMService(kvm: kvm, logger: environment.logger, notifyThroughEventFDs: eventfds,
                                  dirtyLogMode: dirtyLog, memoryUsers: allowedMemoryUsers)
        }
    }
}

extension DirtyLogMode: ExpressibleByArgument {}
