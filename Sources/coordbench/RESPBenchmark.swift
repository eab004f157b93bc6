import ArgumentParser
import Foundation
import RedisClient
import Synchronization

/// `coordbench resp`: coordination through coordproxy's Redis-protocol listener,
/// each worker a Redis connection (and so a session) of its own.
struct RESPBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resp",
        abstract: "Measure COORD.* commands through coordproxy's RESP listener (--listen-resp).",
        discussion: """
            Each of --workers workers opens its own connection to --url (a coordproxy RESP \
            listener, not Redis itself) and runs, for --duration per round:
              put            COORD.PUT of its own keys
              lock           COORD.LOCK and COORD.UNLOCK of a lock of its own (uncontended)
              lock-handoff   COORD.LOCK and COORD.UNLOCK of one lock shared by every worker;
                             the handoff is the time from one holder's UNLOCK reply to the
                             next holder's LOCK reply
            Figures are medians of --rounds rounds.

            Example: coordproxy --redis-url redis://127.0.0.1:6379 --listen-resp 127.0.0.1:6380 &
                     coordbench resp --url redis://127.0.0.1:6380
            """)

    @Option(help: "The coordproxy RESP listener: redis://host:port.")
    var url: String

    @Option(help: "Workers, each on a connection of its own.")
    var workers = 16

    @Option(help: "Seconds per round.")
    var duration = 3.0

    @Option(help: "Rounds per workload; the table shows medians.")
    var rounds = 3

    @Option(help: "Workloads, comma-separated: put, lock, lock-handoff.")
    var workloads = "put,lock,lock-handoff"

    func validate() throws {
        guard workers >= 1, duration > 0, rounds >= 1 else { throw ValidationError("--workers and --rounds must be at least 1 and --duration positive") }
        for name in workloads.split(separator: ",") where !["put", "lock", "lock-handoff"].contains(String(name)) {
            throw ValidationError("unknown workload '\(name)'; known: put, lock, lock-handoff")
        }
    }

    /// One round's figures.
    struct Round: Sendable {
        var opsPerSecond: Double
        var p50Micros: Double
        var p99Micros: Double
        var handoffP50Micros: Double?
    }

    func run() async throws {
        var configuration = try RedisConfiguration(url: url)
        configuration.commandTimeout = .seconds(60)
        var rows: [(String, Round)] = []
        for workload in workloads.split(separator: ",").map(String.init) {
            var results: [Round] = []
            for round in 1...rounds {
                let result = try await measure(workload, configuration: configuration, round: round)
                log("resp \(workload) round \(round)/\(rounds): \(Int(result.opsPerSecond)) ops/s, p50 \(String(format: "%.2f", result.p50Micros / 1000)) ms"
                    + (result.handoffP50Micros.map { String(format: ", handoff p50 %.2f ms", $0 / 1000) } ?? ""))
                results.append(result)
            }
            let median = results.sorted { $0.opsPerSecond < $1.opsPerSecond }[results.count / 2]
            rows.append((workload, median))
        }
        print("coordination through coordproxy's RESP listener (\(url)), \(workers) workers on connections of their own, medians of \(rounds) rounds of \(duration) s")
        print(pad("workload", 16) + lpad("ops/s", 10) + lpad("p50 ms", 10) + lpad("p99 ms", 10) + lpad("handoff p50 ms", 16))
        for (name, round) in rows {
            print(pad(name, 16) + lpad(String(Int(round.opsPerSecond)), 10) + lpad(String(format: "%.2f", round.p50Micros / 1000), 10)
                  + lpad(String(format: "%.2f", round.p99Micros / 1000), 10)
                  + lpad(round.handoffP50Micros.map { String(format: "%.2f", $0 / 1000) } ?? "-", 16))
        }
    }

    private final class Holds: Sendable {
        let value = Mutex<[(ContinuousClock.Instant, ContinuousClock.Instant)]>([])
    }

    private static func check(_ reply: RedisReply, _ what: String) throws -> RedisReply {
        if case .error(let message) = reply { throw ValidationErrorMessage("\(what) failed: \(message)") }
        return reply
    }

    private func measure(_ workload: String, configuration: RedisConfiguration, round: Int) async throws -> Round {
        let connections = try await withThrowingTaskGroup(of: RedisConnection.self) { group in
            for _ in 0..<workers { group.addTask { try await RedisConnection.connect(configuration) } }
            var all: [RedisConnection] = []
            for try await connection in group { all.append(connection) }
            return all
        }
        defer { for connection in connections { Task { await connection.close() } } }
        let clock = ContinuousClock()
        let deadline = clock.now + .milliseconds(Int(duration * 1000))
        let started = clock.now
        // (acquired, released) of every hold, for the handoff.
        let holds = Holds()
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for (index, connection) in connections.enumerated() {
                group.addTask {
                    var samples: [Double] = []
                    var count = 0
                    let lockName = workload == "lock" ? "bench-resp-lock-\(round)-\(index)" : "bench-resp-handoff-\(round)"
                    while clock.now < deadline {
                        let begin = clock.now
                        switch workload {
                        case "put":
                            _ = try Self.check(try await connection.send(["COORD.PUT", "bench-resp/\(index)/\(count % 100)", "value"].map { Array($0.utf8) }), "COORD.PUT")
                        default:
                            _ = try Self.check(try await connection.send(["COORD.LOCK", lockName].map { Array($0.utf8) }), "COORD.LOCK")
                            let acquired = clock.now
                            _ = try Self.check(try await connection.send(["COORD.UNLOCK", lockName].map { Array($0.utf8) }), "COORD.UNLOCK")
                            let released = clock.now
                            if workload == "lock-handoff" { holds.value.withLock { $0.append((acquired, released)) } }
                        }
                        samples.append(microseconds(clock.now - begin))
                        count += 1
                    }
                    return samples
                }
            }
            var all: [Double] = []
            for try await samples in group { all.append(contentsOf: samples) }
            return all
        }
        let seconds = microseconds(clock.now - started) / 1e6
        let sorted = latencies.sorted()
        guard !sorted.isEmpty else { throw ValidationErrorMessage("no \(workload) operation completed in \(duration) s") }
        var handoff: Double?
        if workload == "lock-handoff" {
            let ordered = holds.value.withLock { $0 }.sorted { $0.0 < $1.0 }
            let gaps = zip(ordered, ordered.dropFirst()).map { microseconds($1.0 - $0.1) }.sorted()
            if !gaps.isEmpty { handoff = gaps[gaps.count / 2] }
        }
        return Round(opsPerSecond: Double(sorted.count) / seconds, p50Micros: sorted[sorted.count / 2],
                     p99Micros: sorted[min(sorted.count - 1, sorted.count * 99 / 100)], handoffP50Micros: handoff)
    }
}
