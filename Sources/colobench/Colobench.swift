import ArgumentParser

/// `colobench`: the project's benchmarks. Each prints its figures next to a
/// baseline measured in the same run, as a ratio, so that a figure means the
/// same on any machine. Results go to docs/PERFORMANCE.md with the command.
@main
struct Colobench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colobench",
        abstract: "Benchmarks of the COLO daemons, each beside a baseline measured in the same run.",
        subcommands: [IPCBenchmark.self, NBDBenchmark.self, CheckpointBenchmark.self, VMStateBenchmark.self, ProxyBenchmark.self])
}
