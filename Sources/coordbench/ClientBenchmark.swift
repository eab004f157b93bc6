import ArgumentParser
import Foundation
import RedisClient

/// `coordbench client`: SET/GET throughput and latency of the Redis client,
/// next to `redis-benchmark` run against the same server in the same run.
struct ClientBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Measure the Redis client (one connection, a pool, pipelining on and off) against redis-benchmark.",
        discussion: """
            Runs SET and GET from --tasks concurrent tasks through one RedisConnection \
            and through a RedisConnectionPool, with automatic pipelining on and off, then \
            runs `redis-benchmark -c <tasks> -P 16` and `redis-benchmark -c <tasks>` for the \
            same commands against the same server. Each figure is the median of --rounds runs.

            Without --url (or $REDIS_URL) a private redis-server is started on a loopback \
            port and stopped at the end.
            """
    )

    @Option(help: "Redis URL of the server to measure (default: $REDIS_URL, else a private redis-server).")
    var url: String?

    @Option(help: "Concurrent tasks issuing requests.")
    var tasks = 64

    @Option(help: "Requests per run.")
    var requests = 200_000

    @Option(help: "Runs per configuration; the table shows medians.")
    var rounds = 3

    @Option(help: "Connections in the pool.")
    var poolSize = 4

    @Option(help: "Value size in bytes for SET.")
    var valueSize = 3

    @Option(help: "Pipeline depth for the redis-benchmark reference (-P).")
    var referencePipeline = 16

    @Option(help: "Which clients to measure, comma-separated: connection, pool, unpipelined, reference.")
    var clients = "connection,pool,unpipelined,reference"

    func validate() throws {
        let known: Set<String> = ["connection", "pool", "unpipelined", "reference"]
        for name in clients.split(separator: ",") where !known.contains(name.trimmingCharacters(in: .whitespaces)) {
            throw ValidationError("unknown client '\(name)' in --clients; known: connection, pool, unpipelined, reference")
        }
        guard tasks >= 1, requests >= tasks, rounds >= 1, poolSize >= 1, valueSize >= 0 else {
            throw ValidationError("--tasks, --rounds and --pool-size must be at least 1 and --requests at least --tasks")
        }
    }

    func run() async throws {
        try await withBenchmarkServer(url: url) { configuration in
            try await measure(configuration)
        }
    }

    private func measure(_ configuration: RedisConfiguration) async throws {
        let probe = try await RedisConnection.connect(configuration)
        let info = try await probe.send("INFO", "server").string ?? ""
        let version = info.split(separator: "\r\n").first { $0.hasPrefix("redis_version:") }?.dropFirst("redis_version:".count) ?? "?"
        await probe.close()

        let unpipelined = {
            var copy = configuration
            copy.pipelining = false
            return copy
        }()
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueSize)
        let commands: [(name: String, arguments: [[UInt8]])] = [
            ("SET", [Array("SET".utf8), Array("key:bench".utf8), value]),
            ("GET", [Array("GET".utf8), Array("key:bench".utf8)]),
        ]
        let clients: [(label: String, make: @Sendable () async throws -> (any RedisCommandExecutor, @Sendable () async -> Void))] = [
            ("RedisConnection, pipelined", {
                let connection = try await RedisConnection.connect(configuration)
                return (connection, { await connection.close() })
            }),
            ("RedisConnectionPool x\(poolSize), pipelined", { [poolSize] in
                let pool = try await RedisConnectionPool.connect(configuration, size: poolSize)
                return (pool, { await pool.close() })
            }),
            ("RedisConnection, no pipelining", {
                let connection = try await RedisConnection.connect(unpipelined)
                return (connection, { await connection.close() })
            }),
            ("RedisConnectionPool x\(poolSize), no pipelining", { [poolSize] in
                let pool = try await RedisConnectionPool.connect(unpipelined, size: poolSize)
                return (pool, { await pool.close() })
            }),
        ]

        let wanted = Set(self.clients.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        let selected = clients.filter { client in
            let kind = client.label.contains("no pipelining") ? "unpipelined" : client.label.hasPrefix("RedisConnectionPool") ? "pool" : "connection"
            return wanted.contains(kind)
        }
        var rows: [Row] = []
        for command in commands {
            for client in selected {
                var results: [RunResult] = []
                for round in 1...rounds {
                    log("\(command.name) via \(client.label): round \(round) of \(rounds)")
                    let (executor, close) = try await client.make()
                    results.append(try await runLoad(executor, arguments: command.arguments))
                    await close()
                }
                rows.append(Row(command: command.name, client: client.label, result: RunResult.median(results)))
            }
            for pipeline in wanted.contains("reference") ? [referencePipeline, 1] : [] {
                let label = "redis-benchmark -c \(tasks)" + (pipeline > 1 ? " -P \(pipeline)" : "")
                var results: [RunResult] = []
                for round in 1...rounds {
                    log("\(command.name) via \(label): round \(round) of \(rounds)")
                    guard let result = try referenceRun(configuration, command: command.name, pipeline: pipeline) else { break }
                    results.append(result)
                }
                if !results.isEmpty { rows.append(Row(command: command.name, client: label, result: RunResult.median(results))) }
            }
        }
        printReport(rows, version: String(version), configuration: configuration)
    }

    /// Runs `requests` requests from `tasks` tasks and measures throughput and latency.
    private func runLoad(_ executor: any RedisCommandExecutor, arguments: [[UInt8]]) async throws -> RunResult {
        // Warm up the connections.
        for _ in 0..<100 { _ = try await executor.send(arguments) }
        return try await measureLoad(tasks: tasks, requests: requests) { _, _ in
            _ = try await executor.send(arguments)
        }
    }

    /// Runs redis-benchmark for one command; `nil` when redis-benchmark is not installed.
    private func referenceRun(_ configuration: RedisConfiguration, command: String, pipeline: Int) throws -> RunResult? {
        try redisBenchmark(redisBenchmarkConnectionArguments(configuration)
            + ["-c", String(tasks), "-P", String(pipeline), "-n", String(requests), "-d", String(valueSize), "-t", command.lowercased()], test: command)
    }

    private func printReport(_ rows: [Row], version: String, configuration: RedisConfiguration) {
        print("")
        print("Redis client benchmark: \(tasks) concurrent tasks, \(requests) requests per run, \(valueSize)-byte values, median of \(rounds) runs")
        print("server: redis \(version) at \(configuration.redactedURL); machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("")
        let header = pad("command", 8) + pad("client", 40) + lpad("ops/s", 12) + lpad("p50 µs", 10) + lpad("p99 µs", 10)
        print(header)
        print(String(repeating: "-", count: header.count))
        for row in rows {
            print(pad(row.command, 8) + pad(row.client, 40) + lpad(String(Int(row.result.opsPerSecond)), 12)
                  + lpad(String(format: "%.0f", row.result.p50Micros), 10) + lpad(String(format: "%.0f", row.result.p99Micros), 10))
        }
        print("")
        for command in Set(rows.map(\.command)).sorted(by: >) {
            func ops(_ prefix: String) -> Double? { rows.first { $0.command == command && $0.client.hasPrefix(prefix) }?.result.opsPerSecond }
            guard let pipelined = ops("RedisConnection, pipelined"), let plain = ops("RedisConnection, no pipelining") else { continue }
            let pool = ops("RedisConnectionPool x\(poolSize), pipelined") ?? 0
            var line = "\(command): one connection pipelined / no pipelining = \(String(format: "%.1f", pipelined / plain))x"
            if let reference = ops("redis-benchmark -c \(tasks) -P") {
                line += "; vs redis-benchmark -P \(referencePipeline): connection \(percent(pipelined / reference)), pool \(percent(pool / reference))"
            }
            print(line)
        }
    }

}

