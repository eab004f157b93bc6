import Foundation
import RedisClient

/// Throughput and latency of one run.
struct RunResult: Sendable {
    var opsPerSecond: Double
    var p50Micros: Double
    var p99Micros: Double

    /// The run with the median throughput, with its own latencies.
    static func median(_ results: [RunResult]) -> RunResult {
        let sorted = results.sorted { $0.opsPerSecond < $1.opsPerSecond }
        return sorted[sorted.count / 2]
    }
}

struct Row: Sendable {
    var command: String
    var client: String
    var result: RunResult
}

func log(_ message: String) {
    FileHandle.standardError.write(Data("coordbench: \(message)\n".utf8))
}

func findOnPath(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
        return "\(directory)/\(name)"
    }
    return nil
}

/// Runs `requests` operations from `tasks` concurrent tasks; `operation` gets the task
/// index and the operation's index within the task. Returns ops/s and p50/p99 latency.
func measureLoad(tasks: Int, requests: Int, _ operation: @escaping @Sendable (Int, Int) async throws -> Void) async throws -> RunResult {
    let perTask = max(requests / tasks, 1)
    let clock = ContinuousClock()
    let start = clock.now
    let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
        for task in 0..<tasks {
            group.addTask {
                var samples: [UInt64] = []
                samples.reserveCapacity(perTask)
                for index in 0..<perTask {
                    let begin = clock.now
                    try await operation(task, index)
                    let elapsed = clock.now - begin
                    samples.append(UInt64(elapsed.components.attoseconds / 1_000_000_000) + UInt64(elapsed.components.seconds) * 1_000_000_000)
                }
                return samples
            }
        }
        var all: [UInt64] = []
        for try await samples in group { all.append(contentsOf: samples) }
        return all
    }
    let elapsed = clock.now - start
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    let sorted = latencies.sorted()
    return RunResult(
        opsPerSecond: Double(sorted.count) / seconds,
        p50Micros: Double(sorted[sorted.count / 2]) / 1000,
        p99Micros: Double(sorted[min(sorted.count - 1, sorted.count * 99 / 100)]) / 1000)
}

/// Runs redis-benchmark with `arguments` (and `stdin` for `-x`) and returns the CSV row
/// for `test`; `nil` when redis-benchmark is not installed.
func redisBenchmark(_ arguments: [String], stdin: [UInt8]? = nil, test: String) throws -> RunResult? {
    guard let executable = findOnPath("redis-benchmark") else {
        log("redis-benchmark not found on PATH (Debian: apt-get install redis-tools); skipping the reference")
        return nil
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = ["--csv"] + arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.standardError
    let input = Pipe()
    if stdin != nil { process.standardInput = input }
    try process.run()
    if let stdin {
        input.fileHandleForWriting.write(Data(stdin))
        try input.fileHandleForWriting.close()
    }
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    for line in text.split(separator: "\n") where line.hasPrefix("\"\(test)") {
        let fields = line.split(separator: ",").map { Double($0.replacingOccurrences(of: "\"", with: "")) }
        guard fields.count >= 7, let rps = fields[1], let p50 = fields[4], let p99 = fields[6] else { break }
        return RunResult(opsPerSecond: rps, p50Micros: p50 * 1000, p99Micros: p99 * 1000)
    }
    throw ValidationErrorMessage("could not read redis-benchmark's output: \(text)")
}

/// redis-benchmark's connection options for a configuration.
func redisBenchmarkConnectionArguments(_ configuration: RedisConfiguration) -> [String] {
    var arguments: [String] = []
    switch configuration.endpoint {
    case .tcp(let host, let port): arguments += ["-h", host, "-p", String(port)]
    case .unixSocket(let path): arguments += ["-s", path]
    }
    if let password = configuration.password { arguments += ["-a", password, "--no-auth-warning"] }
    if let user = configuration.username { arguments += ["--user", user] }
    if configuration.database != 0 { arguments += ["--dbnum", String(configuration.database)] }
    return arguments
}

struct ValidationErrorMessage: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Left-aligned and right-aligned table cells, and percentages.
func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count) }
func lpad(_ text: String, _ width: Int) -> String { text.count >= width ? " " + text : String(repeating: " ", count: width - text.count) + text }
func percent(_ ratio: Double) -> String { String(format: "%.0f%%", ratio * 100) }

/// Uses `url` (or $REDIS_URL), else starts a private redis-server on a loopback port
/// for the duration of `body`.
func withBenchmarkServer(url: String?, _ body: (RedisConfiguration) async throws -> Void) async throws {
    let environmentURL = ProcessInfo.processInfo.environment["REDIS_URL"].flatMap { $0.isEmpty ? nil : $0 }
    if let given = url ?? environmentURL {
        try await body(try RedisConfiguration(url: given))
        return
    }
    log("starting a private redis-server on a loopback port")
    let server = try await RedisServer.start(.init(transport: .tcp(), keyspaceEvents: "Kx"))
    do {
        try await body(server.configuration)
    } catch {
        await server.stop()
        throw error
    }
    await server.stop()
}

/// One row of the library's results, for scripts/loadtest.sh's report.
struct LibraryResult: Sendable {
    var workload: String
    var opsPerSecond: Double
    var p50Micros: Double?
    var p99Micros: Double?
}

func microseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
}

/// Writes `results` in the load generator's JSON format (scripts/loadgen: label,
/// notes, results with workload, ops_per_sec, p50_us, p99_us), keeping the results
/// of other workloads already in the file, so that `coordbench kv` and `coordbench
/// primitives` fill one "Swift library direct" column.
func writeLibraryResults(_ results: [LibraryResult], to path: String, notes: String) throws {
    var existing: [[String: Any]] = []
    var existingNotes: [String] = []
    if let data = FileManager.default.contents(atPath: path),
       let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
        existing = object["results"] as? [[String: Any]] ?? []
        if let previous = object["notes"] as? String, !previous.isEmpty { existingNotes = [previous] }
    }
    let replaced = Set(results.map(\.workload))
    existing.removeAll { replaced.contains($0["workload"] as? String ?? "") }
    for result in results {
        var entry: [String: Any] = ["workload": result.workload, "ops_per_sec": result.opsPerSecond]
        if let p50 = result.p50Micros { entry["p50_us"] = p50 }
        if let p99 = result.p99Micros { entry["p99_us"] = p99 }
        existing.append(entry)
    }
    let object: [String: Any] = [
        "label": "Swift library direct",
        "endpoint": "the Coordination library in process, one pipelined connection to Redis",
        "notes": (existingNotes + [notes]).joined(separator: "; "),
        "results": existing,
    ]
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    try data.write(to: URL(fileURLWithPath: path))
}
