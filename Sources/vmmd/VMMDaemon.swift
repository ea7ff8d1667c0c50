import ArgumentParser
import DaemonRuntime

/// `vmmd`: Runs the protected VM: owns /dev/kvm, guest RAM (a memfd) and the device models.
@main
struct VMMDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmmd",
        abstract: "Runs the protected VM: owns /dev/kvm, guest RAM (a memfd) and the device models.",
        version: coloVersion)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        try DaemonHost.run(name: "vmmd", options: options, policy: seccompPolicy) { _ in
            IdleService()
        }
    }
}
