import ArgumentParser
import DaemonRuntime
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

    func run() throws {
        let kvmDevice = kvmDevice
        let eventfds = virtioNotify == .eventfd
        try DaemonHost.run(name: "vmmd", options: options, policy: seccompPolicy) { environment in
            let kvm = try KVMDevice(path: kvmDevice)
            return try VMMService(kvm: kvm, logger: environment.logger, notifyThroughEventFDs: eventfds)
        }
    }
}
