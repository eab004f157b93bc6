import ArgumentParser

@main
struct CoordBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordbench",
        abstract: "Load generator for the Redis client and the coordination store.",
        subcommands: [KVBenchmark.self, ClientBenchmark.self, PrimitivesBenchmark.self, RESPBenchmark.self],
        defaultSubcommand: KVBenchmark.self
    )
}
