import BlockProtocol
import KVM
import Loaders
import SystemPackage

/// Everything a VM is made from. Files arrive as fds: vmmd never opens
/// kernels, disks or network devices itself.
public struct VirtualMachineConfiguration: Sendable {
    public enum Kernel: Sendable {
        /// A multiboot kernel (the test guest).
        case multiboot(FileDescriptor)
        /// A Linux bzImage, with an optional initramfs.
        case linux(FileDescriptor, initrd: FileDescriptor?)
        /// Nothing loaded: RAM and vCPU state arrive later (a state load
        /// into a VM prepared for incoming state).
        case incoming
    }

    /// The frame socket of the virtio-net device and the MAC it presents.
    public struct Network: Sendable {
        public var frames: FileDescriptor
        public var mac: [UInt8]

        public init(frames: FileDescriptor, mac: [UInt8]) {
            self.frames = frames
            self.mac = mac
        }
    }

    public static let minimumMemoryBytes: UInt64 = 2 << 20
    public static let maximumMemoryBytes: UInt64 = 1 << 40
    public static let maximumVcpus = 64

    public var memoryBytes: UInt64
    public var vcpuCount: Int
    public var kernel: Kernel
    public var commandLine: String
    public var network: Network?
    /// The socket to the block service (attached by the VM at creation).
    public var block: FileDescriptor?
    /// Take virtqueue notifications as KVM ioeventfds (no exit to user space).
    public var notifyThroughEventFDs: Bool
    /// How guest writes are logged once a dirty-log sync asks for them.
    public var dirtyLogMode: DirtyLogMode = .manualClear

    public init(memoryBytes: UInt64, vcpuCount: Int, kernel: Kernel, commandLine: String,
                network: Network?, block: FileDescriptor?, notifyThroughEventFDs: Bool = true) {
        self.memoryBytes = memoryBytes
        self.vcpuCount = vcpuCount
        self.kernel = kernel
        self.commandLine = commandLine
        self.network = network
        self.block = block
        self.notifyThroughEventFDs = notifyThroughEventFDs
    }
}

/// Why a VM could not be made or run.
public enum VirtualMachineError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidConfiguration(String)
    case kvm(String)
    case memory(String)
    case loader(LoaderError)
    case block(BlockChannelError)
    case devices(String)

    public var description: String {
        switch self {
        case let .invalidConfiguration(detail): return "invalid configuration: \(detail)"
        case let .kvm(detail): return "KVM: \(detail)"
        case let .memory(detail): return "guest memory: \(detail)"
        case let .loader(error): return "kernel: \(error)"
        case let .block(error): return "disk: \(error)"
        case let .devices(detail): return "devices: \(detail)"
        }
    }
}

/// How a VM ended.
public enum VirtualMachineEnd: Sendable, Equatable, CustomStringConvertible {
    /// The guest powered itself off (ACPI SLP_EN).
    case poweredOff
    /// Stopped on request.
    case stopped
    /// Triple fault: a real PC would reset; this VMM ends the VM.
    case reset
    /// KVM or the vCPU failed.
    case failed(String)

    public var description: String {
        switch self {
        case .poweredOff: return "powered off"
        case .stopped: return "stopped"
        case .reset: return "reset (triple fault)"
        case let .failed(reason): return "failed: \(reason)"
        }
    }
}
