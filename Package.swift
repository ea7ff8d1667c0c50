// swift-tools-version:6.0
//
// One package for the whole system. The tree shows the privilege split:
// five daemons and a CLI, each a thin executable over shared libraries that
// each do one job (see docs/ARCHITECTURE.md).
import PackageDescription

let package = Package(
    name: "colo",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vmmd", targets: ["vmmd"]),
        .executable(name: "checkpointd", targets: ["checkpointd"]),
        .executable(name: "proxyd", targets: ["proxyd"]),
        .executable(name: "blockd", targets: ["blockd"]),
        .executable(name: "supervisord", targets: ["supervisord"]),
        .executable(name: "coloctl", targets: ["coloctl"]),
        .executable(name: "colo-witness", targets: ["colo-witness"]),
        .executable(name: "colobench", targets: ["colobench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // C libraries reached through pkg-config.
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        // Macros and inline functions Swift cannot import.
        .target(name: "CSupport"),

        // The local control protocol: generated messages plus helpers.
        .target(name: "ColoProtocol", dependencies: [
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        // SOCK_SEQPACKET control sockets with fd passing and peer checks.
        .target(name: "ControlSocket", dependencies: [
            "Durations",
            "CSupport", "ColoProtocol",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Durations as whole nanoseconds, microseconds, milliseconds.
        .target(name: "Durations"),
        // Starting programs (posix_spawn): the demo's namespaces and daemons.
        .target(name: "ChildProcess"),
        // Socket activation, readiness, watchdog, journald.
        .target(name: "Systemd", dependencies: [
            "CSystemd",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Seccomp allowlists and privilege dropping.
        .target(name: "Sandbox", dependencies: [
            "CSeccomp", "CSupport",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // memfds: guest RAM, the colo-cache, bulk data handed between daemons.
        .target(name: "SharedMemory", dependencies: [
            "CSupport",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Mutual authentication of every connection between the two hosts.
        .target(name: "PeerAuthentication", dependencies: ["COpenSSL"]),
        // A host's configuration file, parsed and validated.
        .target(name: "PairConfiguration"),
        // Framed, tuned TCP connections between the hosts.
        .target(name: "PeerLink", dependencies: ["CSupport", "PairConfiguration"]),
        // The pair's states and transitions, free of I/O.
        .target(name: "PairStateMachine"),
        // The pair's metrics and their Prometheus text exposition over HTTP.
        .target(name: "PairMetrics", dependencies: [
            "Durations",
            "ColoProtocol", "ControlSocket", "PairConfiguration", "PeerLink",
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // Small state files replaced atomically and durably.
        .target(name: "DurableFile"),
        // The tie-breaker that keeps a cut link from making two primaries.
        .target(name: "Witness", dependencies: [
            "ColoProtocol", "ControlSocket", "DurableFile", "PairConfiguration", "PeerAuthentication", "PeerLink",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // One host's side of a pair: peer link, heartbeat, witness, state.
        .target(name: "PairSupervision", dependencies: [
            "Durations",
            "ColoProtocol", "ControlSocket", "DurableFile", "PairConfiguration", "PairStateMachine",
            "PeerAuthentication", "PeerLink", "Witness",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // supervisord's hands: the local daemons driven through a sync,
        // checkpoints and failover (the PairActuator it runs).
        .target(name: "PairActuation", dependencies: [
            "Durations",
            "ColoProtocol", "ControlSocket", "PairConfiguration", "PairMetrics", "PairStateMachine", "PairSupervision",
            "PeerLink", "SharedMemory",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The disk abstraction every block layer implements and serves.
        .target(name: "BlockDevice"),
        // The NBD protocol: server and client (fixed newstyle, structured replies).
        .target(name: "NBD", dependencies: [
            "Durations",
            "BlockDevice", "ControlSocket", "CSupport",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Sparse raw base images and the active/hidden overlay format.
        .target(name: "BlockImages", dependencies: ["BlockDevice", "CSupport"]),
        // COLO disk replication: primary (replicated writes, resync mirror),
        // secondary (copy-before-write, active/hidden view, checkpoint,
        // crash-safe failover commit).
        .target(name: "BlockReplication", dependencies: [
            "BlockDevice", "BlockImages", "NBD", "ControlSocket",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // blockd's side of vmmd's virtio-blk data path (block.proto).
        .target(name: "GuestBlockService", dependencies: [
            "BlockDevice", "BlockProtocol", "ColoProtocol", "ControlSocket", "GuestMemory",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // KVM's ioctl request numbers and kvm_run accessors.
        .target(name: "CKVM"),
        // KVM as typed Swift: /dev/kvm, VM and vCPU fds, registers.
        .target(name: "KVM", dependencies: [
            "CKVM",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Guest RAM: the sealed memfd, bounds-checked access, device dirty log.
        .target(name: "GuestMemory", dependencies: [
            "CSupport", "SharedMemory",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Kernel loaders: multiboot (ELF or address fields) and Linux bzImage.
        .target(name: "Loaders", dependencies: [
            "GuestMemory",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Framing of the vmmd <-> block service data path (block.proto).
        .target(name: "BlockProtocol", dependencies: [
            "ColoProtocol", "ControlSocket",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Device models: port bus, serial, PCI, virtio (net, blk), power.
        .target(name: "Devices", dependencies: [
            "CSupport", "GuestMemory", "BlockProtocol", "ColoProtocol", "ControlSocket",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // A VM: KVM set-up, vCPU threads, the PC platform's devices.
        .target(name: "VirtualMachine", dependencies: [
            "KVM", "GuestMemory", "Loaders", "Devices", "BlockProtocol", "ColoProtocol", "ControlSocket",
            "SharedMemory", "Durations",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The byte streams between two checkpointds: page batches and control
        // frames on authenticated TCP channels, the dirty-bitmap format.
        .target(name: "RAMStream"),
        // Checkpoints: the primary's page sender and live migration, the
        // secondary's colo-cache and commit, verify mode.
        .target(name: "Checkpointing", dependencies: [
            "Durations",
            "CSupport", "RAMStream", "SharedMemory", "PeerAuthentication", "ControlSocket",
        ]),
        // Zero-copy parsing, checksums and rewriting of Ethernet frames.
        .target(name: "Packets"),
        // The COLO comparison of the two guests' output: a pure state machine.
        .target(name: "PacketComparison", dependencies: ["Packets"]),
        // The secondary's TCP sequence numbers moved into the primary's space.
        .target(name: "SequenceRewriter", dependencies: ["Packets"]),
        // Length-prefixed frame records (pcap): the proxyd<->proxyd link, mismatch captures.
        .target(name: "FrameLink"),
        // What every daemon's main shares.
        .target(name: "DaemonRuntime", dependencies: [
            "Durations",
            "ColoProtocol", "ControlSocket", "Systemd", "Sandbox",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),

        .executableTarget(name: "vmmd", dependencies: [
            "Durations",
            "DaemonRuntime", "VirtualMachine", "KVM", "Devices", "CSupport",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "checkpointd", dependencies: [
            "Durations",
            "DaemonRuntime", "Checkpointing", "SharedMemory", "PeerAuthentication",
        ]),
        .executableTarget(name: "proxyd", dependencies: [
            "CSupport", "DaemonRuntime", "Packets", "PacketComparison", "SequenceRewriter", "FrameLink", "PeerAuthentication",
            "PeerLink",
        ]),
        .executableTarget(name: "blockd", dependencies: [
            "DaemonRuntime", "BlockDevice", "BlockImages", "BlockReplication", "GuestBlockService", "NBD",
            "PeerAuthentication", "ColoProtocol", "ControlSocket",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "supervisord", dependencies: [
            "Durations",
            "ChildProcess", "DaemonRuntime", "CSupport", "ColoProtocol", "ControlSocket", "PairActuation", "PairConfiguration",
            "PairMetrics", "PairSupervision", "PeerAuthentication",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "coloctl", dependencies: [
            "ChildProcess", "ColoProtocol", "ControlSocket", "PairConfiguration",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .executableTarget(name: "colo-witness", dependencies: [
            "Witness", "PairConfiguration", "PeerAuthentication", "PeerLink", "Sandbox", "Systemd",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Benchmarks, each beside a baseline measured in the same run.
        .executableTarget(name: "colobench", dependencies: [
            "Durations",
            "ColoProtocol", "ControlSocket", "CSupport", "SharedMemory", "BlockDevice", "BlockImages", "BlockReplication", "NBD",
            "Checkpointing", "PeerAuthentication", "VirtualMachine", "KVM",
            "Packets", "PacketComparison", "SequenceRewriter",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        .testTarget(name: "ColoProtocolTests", dependencies: ["ColoProtocol"]),
        .testTarget(name: "ControlSocketTests", dependencies: ["ControlSocket", "ColoProtocol", "SharedMemory"]),
        .testTarget(name: "SharedMemoryTests", dependencies: ["SharedMemory"]),
        .testTarget(name: "PeerAuthenticationTests", dependencies: ["PeerAuthentication"]),
        .testTarget(name: "PairConfigurationTests", dependencies: ["PairConfiguration"]),
        .testTarget(name: "PeerLinkTests", dependencies: ["PeerLink", "PairConfiguration"]),
        .testTarget(name: "DurationsTests", dependencies: ["Durations"]),
        .testTarget(name: "PairStateMachineTests", dependencies: ["PairStateMachine"]),
        .testTarget(name: "PairMetricsTests", dependencies: ["PairMetrics", "PairConfiguration", "ColoProtocol"]),
        .testTarget(name: "PairSupervisionTests", dependencies: [
            "ColoProtocol", "PairSupervision", "PairConfiguration", "PairStateMachine", "PeerAuthentication", "PeerLink",
            "Witness",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "WitnessTests", dependencies: ["Witness", "ColoProtocol", "PeerAuthentication", "PeerLink",
                                                         "PairConfiguration"]),
        .testTarget(name: "SystemdTests", dependencies: ["Systemd"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox"]),
        .testTarget(name: "NBDTests", dependencies: [
            "NBD", "BlockDevice", "BlockImages", "BlockReplication", "ControlSocket",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "BlockImagesTests", dependencies: ["BlockImages", "BlockDevice"]),
        .testTarget(name: "BlockReplicationTests", dependencies: ["BlockReplication", "BlockImages", "BlockDevice", "NBD"]),
        .testTarget(name: "VirtualMachineTests", dependencies: ["VirtualMachine", "ColoProtocol", "GuestMemory"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM"]),
        .testTarget(name: "GuestMemoryTests", dependencies: [
            "GuestMemory", "SharedMemory", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "LoadersTests", dependencies: ["Loaders", "GuestMemory"]),
        .testTarget(name: "DevicesTests", dependencies: [
            "Devices", "GuestMemory", "BlockProtocol", "ColoProtocol", "ControlSocket",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "RAMStreamTests", dependencies: ["RAMStream"]),
        .testTarget(name: "CheckpointingTests", dependencies: [
            "Checkpointing", "RAMStream", "SharedMemory", "PeerAuthentication",
        ]),
        .testTarget(name: "PacketsTests", dependencies: ["Packets"]),
        .testTarget(name: "PacketComparisonTests", dependencies: ["PacketComparison", "Packets"]),
        .testTarget(name: "FrameLinkTests", dependencies: ["FrameLink"]),
        .testTarget(name: "SequenceRewriterTests", dependencies: ["SequenceRewriter", "PacketComparison", "Packets"]),
    ],
    swiftLanguageModes: [.v6]
)
