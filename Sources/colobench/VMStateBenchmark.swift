import Durations
import ArgumentParser
import Glibc
import KVM
import SharedMemory
import SystemPackage
import VirtualMachine

/// vmmd's checkpoint primitives on a VM in this process: pause and resume
/// latency, dirty-log sync time per GiB (manual clear and get-and-clear),
/// state save and load, each beside a memcpy of the same amount of RAM
/// measured in the same run.
///
/// The guest is a few instructions of 32-bit code built here (a multiboot
/// image with address fields): one store to every page of RAM above 2 MiB,
/// over and over, so every sync finds the pages written since the last.
struct VMStateBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmstate",
        abstract: "Pause/resume latency, dirty-log sync per GiB, state save/load, beside a memcpy of the RAM.")

    @Option(help: "Guest RAM in MiB.")
    var memoryMib: UInt64 = 1024

    @Option(help: "Pause/resume cycles measured.")
    var cycles = 200

    @Option(help: "Dirty-log syncs measured per mode.")
    var syncs = 20

    @Option(help: "The KVM device.")
    var kvmDevice = "/dev/kvm"

    func validate() throws {
        guard (64...3072).contains(memoryMib) else { throw ValidationError("--memory-mib must be 64...3072") }
        guard cycles >= 10, syncs >= 3 else { throw ValidationError("--cycles at least 10, --syncs at least 3") }
    }

    func run() throws {
        let bytes = Int(memoryMib << 20)
        let gib = Double(bytes) / Double(1 << 30)
        let kvm = try KVMDevice(path: kvmDevice)
        let copy = memcpyNanoseconds(bytes: bytes)
        print("guest RAM \(memoryMib) MiB; memcpy of it: \(formatMilliseconds(copy)) "
            + "(\(format(Double(bytes) / copy, decimals: 2)) GB/s)  (baseline)")

        for mode in DirtyLogMode.allCases {
            let vm = try makeVM(kvm, bytes: bytes, mode: mode)
            vm.start()
            usleep(1_000_000)
            let first = try vm.syncDirtyLog()
            var samples = LatencySamples(capacity: syncs)
            var dirty: [Int] = []
            for _ in 0..<syncs {
                usleep(100_000)
                let sync = try vm.syncDirtyLog()
                samples.record(UInt64(clamping: sync.duration.nanoseconds))
                dirty.append(sync.dirtyPages)
            }
            let p50 = samples.percentile(0.5)
            print("dirty-log sync, \(mode.rawValue) mode, guest dirtying: p50 \(formatMilliseconds(p50)) "
                + "(\(formatMilliseconds(p50 / gib)) per GiB, \(dirty.sorted()[dirty.count / 2]) dirty pages)"
                + "  ratio to memcpy \(format(p50 / copy, decimals: 3))x; first sync (logging on) "
                + formatMilliseconds(Double(first.duration.nanoseconds)))
            if mode == .manualClear {
                try pauseResume(vm, copy: copy)
                try saveLoad(vm, kvm, bytes: bytes, copy: copy)
            }
            vm.stop()
        }
    }

    private func pauseResume(_ vm: VirtualMachine, copy: Double) throws {
        var stopped = LatencySamples(capacity: cycles), paused = LatencySamples(capacity: cycles)
        var resumed = LatencySamples(capacity: cycles)
        for _ in 0..<cycles {
            usleep(5_000)
            let timings = try vm.pause()
            stopped.record(UInt64(clamping: timings.vcpusStopped.nanoseconds))
            paused.record(UInt64(clamping: timings.paused.nanoseconds))
            resumed.record(try UInt64(clamping: vm.resume().nanoseconds))
        }
        for (name, samples) in [("pause (request to vCPUs stopped)", stopped), ("pause (devices quiesced too) ", paused),
                                ("resume                          ", resumed)] {
            let p50 = samples.percentile(0.5), p99 = samples.percentile(0.99)
            print("\(name): p50 \(formatMicroseconds(p50))  p99 \(formatMicroseconds(p99))"
                + "  ratio p50 to memcpy \(format(p50 / copy, decimals: 4))x")
        }
    }

    private func saveLoad(_ vm: VirtualMachine, _ kvm: KVMDevice, bytes: Int, copy: Double) throws {
        _ = try vm.pause()
        var saves = LatencySamples(capacity: 20)
        var blob: [UInt8] = []
        for _ in 0..<20 {
            let began = monotonicNanoseconds()
            blob = try vm.saveState()
            saves.record(monotonicNanoseconds() - began)
        }
        let target = try makeVM(kvm, bytes: bytes, mode: .manualClear, incoming: true)
        _ = try target.pause()
        var loads = LatencySamples(capacity: 20)
        for _ in 0..<20 {
            let began = monotonicNanoseconds()
            try target.loadState(blob)
            loads.record(monotonicNanoseconds() - began)
        }
        target.stop()
        _ = try vm.resume()
        for (name, samples) in [("state save", saves), ("state load", loads)] {
            let p50 = samples.percentile(0.5)
            print("\(name) (\(blob.count) bytes): p50 \(formatMicroseconds(p50))"
                + "  ratio to memcpy \(format(p50 / copy, decimals: 4))x")
        }
    }

    private func makeVM(_ kvm: KVMDevice, bytes: Int, mode: DirtyLogMode, incoming: Bool = false) throws -> VirtualMachine {
        let kernel: VirtualMachineConfiguration.Kernel
        if incoming {
            kernel = .incoming
        } else {
            let image = try Memfd.create(name: "colobench-guest", size: 0, sealedSize: false)
            let code = Self.dirtierImage(end: UInt32(min(UInt64(bytes), 0xC000_0000)))
            _ = code.withUnsafeBytes { write(image.fd.rawValue, $0.baseAddress, $0.count) }
            kernel = .multiboot(image.fd)
        }
        var configuration = VirtualMachineConfiguration(
            memoryBytes: UInt64(bytes), vcpuCount: 1, kernel: kernel, commandLine: "",
            network: nil, block: nil)
        configuration.dirtyLogMode = mode
        defer { if case .multiboot(let fd) = kernel { try? fd.close() } }
        return try VirtualMachine(kvm: kvm, configuration: configuration, consoleOutput: { _ in },
                                  onDeviceEvent: { _ in }, onEnd: { _ in })
    }

    /// A multiboot image (header with address fields, loaded at 1 MiB)
    /// whose code stores to every page from 2 MiB to `end`, endlessly:
    ///   outer: mov edi, 0x200000
    ///   inner: mov [edi], eax; add edi, 4096; cmp edi, end; jb inner
    ///          inc eax; jmp outer
    static func dirtierImage(end: UInt32) -> [UInt8] {
        let load: UInt32 = 0x10_0000
        var code: [UInt8] = [0xBF] + le(0x20_0000)
        code += [0x89, 0x07, 0x81, 0xC7] + le(4096)
        code += [0x81, 0xFF] + le(end) + [0x72, 0xF0, 0x40, 0xEB, 0xE8]
        let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 1 << 16
        var image = le(magic) + le(flags) + le(0 &- (magic &+ flags))
        let total = UInt32(32 + code.count)
        image += le(load) + le(load) + le(load + total) + le(0) + le(load + 32)
        return image + code
    }

    private static func le(_ value: UInt32) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    /// The fastest of a few memcpys of `bytes` between two touched shared
    /// mappings (as guest RAM is; the optimiser cannot drop the copy).
    private func memcpyNanoseconds(bytes: Int) -> Double {
        let flags = MAP_SHARED | MAP_ANONYMOUS
        guard let source = mmap(nil, bytes, PROT_READ | PROT_WRITE, flags, -1, 0), source != MAP_FAILED,
              let target = mmap(nil, bytes, PROT_READ | PROT_WRITE, flags, -1, 0), target != MAP_FAILED else {
            return .nan
        }
        defer { munmap(source, bytes); munmap(target, bytes) }
        memset(source, 1, bytes)
        memset(target, 2, bytes)
        var best = UInt64.max
        for _ in 0..<5 {
            let began = monotonicNanoseconds()
            memcpy(target, source, bytes)
            best = min(best, monotonicNanoseconds() - began)
        }
        return Double(best)
    }
}

func formatMilliseconds(_ nanoseconds: Double) -> String {
    String(format: "%.2f ms", nanoseconds / 1_000_000)
}

