import ArgumentParser
import CoordinationPrimitives
import Foundation
import RedisClient
import Synchronization

/// `coordbench primitives`: locks, elections, STM and the fortress under load.
struct PrimitivesBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "primitives",
        abstract: "Measure the coordination primitives: lock, contended lock handoff, election handoff, STM bank, fortress.",
        discussion: """
            --workers tasks share one pipelined connection; each has its own session (lease). \
            Every workload runs for --seconds, --rounds times; the table shows the median round.

              put (reference)   plain store puts, the reference the others are compared with
              lock uncontended  lock + unlock, each worker on its own mutex
              lock contended    every worker on one mutex: handoffs/s; handoff = the previous
                                holder's unlock call to the next holder's lock returning;
                                wait = a lock call to its return
              election handoff  every worker campaigns on one election; the leader resigns at
                                once: resign call to the next leader's campaign returning
              STM bank          transfers between --accounts accounts (read two, write two),
                                serializable, both keys prefetched; conflicts are retried
              fortress          every worker visits (an empty visit) while a guard locks down
                                and unlocks every 100 ms; lockdown = call to return

            Every figure printed is measured in the run. For etcd 3.4 measured side by side \
            with the same workloads through etcd's Go client (concurrency.Mutex, Election, STM), \
            run scripts/loadtest.sh (its etcd section); --json writes these results for its \
            report ("Swift library direct").

            Without --url (or $REDIS_URL) a private redis-server is started on a loopback port \
            and stopped at the end.
            """)

    @Option(help: "Redis URL of the server to measure (default: $REDIS_URL, else a private redis-server).")
    var url: String?

    @Option(help: "Concurrent workers.")
    var workers = 16

    @Option(help: "Seconds per round of each workload.")
    var seconds = 3.0

    @Option(help: "Rounds per workload; the table shows medians.")
    var rounds = 3

    @Option(help: "Accounts in the STM bank.")
    var accounts = 100

    @Option(help: "Workloads to run, comma separated: put,lock,contended,election,stm,fortress.")
    var only = "put,lock,contended,election,stm,fortress"

    @Option(help: ArgumentHelp("Also write the results to this JSON file (loadgen's format, label \"Swift library direct\"; merged with the file's results if it exists).", valueName: "file"))
    var json: String?

    @Option(help: "Namespace to write to.")
    var namespace = "bench-primitives"

    func validate() throws {
        guard workers >= 2, seconds > 0, rounds >= 1, accounts >= 2 else {
            throw ValidationError("--workers must be at least 2, --seconds above 0, --rounds at least 1, --accounts at least 2")
        }
    }

    func run() async throws {
        try await withBenchmarkServer(url: url) { configuration in
            let connection = try await RedisConnection.connect(configuration)
            let store = CoordinationClient(redis: connection, namespace: namespace)
            let background = Task { try await store.run() }
            defer { background.cancel() }
            try await measure(store)
            background.cancel()
            await store.close()
            await connection.close()
        }
    }

    /// One row of the report.
    struct Measurement: Sendable {
        var rate: Double
        var p50: Duration?
        var p99: Duration?
        var extra: String = ""
    }

    private func measure(_ store: CoordinationClient) async throws {
        let selected = Set(only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        let duration = Duration.milliseconds(Int(seconds * 1000))
        var opened: [Session] = []
        for _ in 0..<workers { opened.append(try await Session(client: store, ttl: 30)) }
        let sessions = opened
        defer { for session in sessions { Task { try? await session.close() } } }

        var rows: [(name: String, unit: String, result: Measurement)] = []
        func run(_ name: String, unit: String, _ workload: () async throws -> Measurement) async throws {
            var results: [Measurement] = []
            for round in 1...rounds {
                log("\(name): round \(round) of \(rounds)")
                results.append(try await workload())
            }
            let median = results.sorted { $0.rate < $1.rate }[results.count / 2]
            rows.append((name, unit, median))
        }

        if selected.contains("put") {
            try await run("put (reference)", unit: "puts/s") {
                try await timed(duration) { worker, deadline, record in
                    var index = 0
                    while ContinuousClock.now < deadline {
                        let begin = ContinuousClock.now
                        _ = try await store.put(Array("bench/put-\(worker)-\(index % 100)".utf8), Array("v".utf8))
                        record(ContinuousClock.now - begin)
                        index += 1
                    }
                }
            }
        }
        if selected.contains("lock") {
            try await run("lock uncontended", unit: "lock+unlock/s") {
                try await timed(duration) { worker, deadline, record in
                    let mutex = DistributedMutex(session: sessions[worker], prefix: "bench/lock-\(worker)")
                    while ContinuousClock.now < deadline {
                        let begin = ContinuousClock.now
                        try await mutex.lock()
                        try await mutex.unlock()
                        record(ContinuousClock.now - begin)
                    }
                }
            }
        }
        if selected.contains("contended") {
            try await run("lock contended", unit: "handoffs/s") {
                try await contended(sessions, duration)
            }
        }
        if selected.contains("election") {
            try await run("election handoff", unit: "elections/s") {
                try await elections(sessions, duration)
            }
        }
        if selected.contains("stm") {
            try await run("STM bank (serializable)", unit: "commits/s") {
                try await bank(store, duration)
            }
        }
        if selected.contains("fortress") {
            try await run("fortress visits", unit: "visits/s") {
                try await fortress(sessions, duration)
            }
        }

        let reference = rows.first { $0.name == "put (reference)" }?.result.rate
        print("")
        print("coordbench primitives: \(workers) workers, \(rounds) rounds of \(seconds) s, medians")
        let header: [String] = [pad("workload", 26), lpad("rate", 12), "  ", pad("unit", 14), lpad("p50", 10), lpad("p99", 10), "  ",
                                pad("vs put", 8), "notes"]
        print(header.joined())
        for row in rows {
            let ratio: String
            if let reference { ratio = row.name == "put (reference)" ? "100%" : percent(row.result.rate / reference) } else { ratio = "-" }
            let p50: String = row.result.p50.map(format) ?? "-"
            let p99: String = row.result.p99.map(format) ?? "-"
            let cells: [String] = [pad(row.name, 26), lpad(String(format: "%.0f", row.result.rate), 12), "  ", pad(row.unit, 14),
                                   lpad(p50, 10), lpad(p99, 10), "  ", pad(ratio, 8), row.result.extra]
            print(cells.joined())
        }
        print("p50/p99: per operation (lock+unlock, put, commit incl. retries, visit); handoff workloads: the handoff latency.")
        if let json {
            let names = ["lock uncontended": "lock", "lock contended": "lock-handoff", "election handoff": "election-handoff", "STM bank (serializable)": "stm"]
            let results = rows.compactMap { row -> LibraryResult? in
                guard let name = names[row.name] else { return nil }
                return LibraryResult(workload: name, opsPerSecond: row.result.rate,
                                     p50Micros: row.result.p50.map(microseconds), p99Micros: row.result.p99.map(microseconds))
            }
            do {
                try writeLibraryResults(results, to: json, notes: "coordbench primitives: \(workers) workers, \(rounds) rounds of \(seconds) s, medians")
                log("wrote \(json)")
            } catch {
                log("could not write \(json): \(error)")
            }
        }
    }

    /// Runs `tasks` tasks (one per worker by default) until `deadline` (or `duration`
    /// from now); returns ops/s and latency percentiles of what they `record`.
    private func timed(_ duration: Duration, tasks: Int? = nil, until deadline: ContinuousClock.Instant? = nil,
                       _ body: @escaping @Sendable (Int, ContinuousClock.Instant, (Duration) -> Void) async throws -> Void) async throws -> Measurement {
        let start = ContinuousClock.now
        let deadline = deadline ?? start + duration
        let samples = try await withThrowingTaskGroup(of: [Duration].self) { group in
            for task in 0..<(tasks ?? workers) {
                group.addTask {
                    var samples: [Duration] = []
                    try await body(task, deadline) { samples.append($0) }
                    return samples
                }
            }
            var all: [Duration] = []
            for try await part in group { all += part }
            return all
        }
        return Measurement(rate: Double(samples.count) / secondsOf(ContinuousClock.now - start), p50: percentile(samples, 50), p99: percentile(samples, 99))
    }

    /// Every worker takes a turn (`acquire`), hands it on (`release`) and queues again,
    /// for `duration`: turns per second, the handoff latency (one worker's release
    /// call to the next one's acquire returning) and the wait (an acquire call to its return).
    private func handoffs(_ duration: Duration, acquire: @escaping @Sendable (Int) async throws -> Void,
                          release: @escaping @Sendable (Int) async throws -> Void) async throws -> Measurement {
        let released = Shared<ContinuousClock.Instant?>(nil)
        let handoffs = Shared<[Duration]>([])
        let waits = Shared<[Duration]>([])
        let deadline = ContinuousClock.now + duration
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    while ContinuousClock.now < deadline {
                        let asked = ContinuousClock.now
                        try await acquire(worker)
                        let now = ContinuousClock.now
                        if now < deadline {
                            waits.withLock { $0.append(now - asked) }
                            if let last = released.withLock({ $0 }) { handoffs.withLock { $0.append(now - last) } }
                        }
                        released.withLock { $0 = ContinuousClock.now }
                        try await release(worker)
                    }
                }
            }
            try await group.waitForAll()
        }
        let all = handoffs.withLock { $0 }
        let waited = waits.withLock { $0 }
        return Measurement(rate: Double(waited.count) / secondsOf(duration), p50: percentile(all, 50), p99: percentile(all, 99),
                           extra: "wait p50 \(percentile(waited, 50).map(format) ?? "-")")
    }

    private func contended(_ sessions: [Session], _ duration: Duration) async throws -> Measurement {
        let mutexes = sessions.map { DistributedMutex(session: $0, prefix: "bench/contended") }
        return try await handoffs(duration, acquire: { try await mutexes[$0].lock() }, release: { try await mutexes[$0].unlock() })
    }

    private func elections(_ sessions: [Session], _ duration: Duration) async throws -> Measurement {
        let elections = sessions.map { Election(session: $0, prefix: "bench/election") }
        return try await handoffs(duration, acquire: { try await elections[$0].campaign("worker-\($0)") },
                                  release: { try await elections[$0].resign() })
    }

    private func bank(_ store: CoordinationClient, _ duration: Duration) async throws -> Measurement {
        let keys = (0..<accounts).map { Array(String(format: "bench/bank/%05d", $0).utf8) }
        for chunk in stride(from: 0, to: keys.count, by: 100) {
            _ = try await store.txn(Txn(success: keys[chunk..<min(chunk + 100, keys.count)].map { .put(key: $0, value: Array("1000".utf8), options: PutOptions()) }))
        }
        let conflicts = Shared(0)
        var result = try await timed(duration) { _, deadline, record in
            while ContinuousClock.now < deadline {
                let from = keys.randomElement()!
                var to = keys.randomElement()!
                while to == from { to = keys.randomElement()! }
                let begin = ContinuousClock.now
                let committed = try await store.stm(isolation: .serializable, prefetch: [from, to]) { tx in
                    let a = Int(String(decoding: try await tx.get(from) ?? [], as: UTF8.self)) ?? 0
                    let b = Int(String(decoding: try await tx.get(to) ?? [], as: UTF8.self)) ?? 0
                    let amount = min(a, Int.random(in: 1...10))
                    tx.put(from, Array(String(a - amount).utf8))
                    tx.put(to, Array(String(b + amount).utf8))
                }
                record(ContinuousClock.now - begin)
                conflicts.withLock { $0 += committed.attempts - 1 }
            }
        }
        // The bank must balance: the benchmark checks its own result.
        var total = 0
        for chunk in stride(from: 0, to: keys.count, by: 100) {
            let response = try await store.txn(Txn(success: keys[chunk..<min(chunk + 100, keys.count)].map { .range(key: $0, options: RangeOptions()) }))
            for case .range(let range) in response.responses { total += Int(range.kvs.first?.valueString ?? "0") ?? 0 }
        }
        guard total == 1000 * accounts else { throw ValidationErrorMessage("STM bank does not balance: \(total), expected \(1000 * accounts)") }
        let conflicted = conflicts.withLock { $0 }
        result.extra = "conflicts \(percent(Double(conflicted) / max(result.rate * self.seconds, 1)))/commit, total exact"
        return result
    }

    private func fortress(_ sessions: [Session], _ duration: Duration) async throws -> Measurement {
        let prefix = "bench/fortress-\(UInt32.random(in: 0...UInt32.max))"
        let guardFortress = Fortress(session: sessions[0], prefix: prefix)
        try await guardFortress.unlock()
        let lockdowns = Shared<[Duration]>([])
        let start = ContinuousClock.now
        let deadline = start + duration
        let guests = Array(sessions.dropFirst())
        var result = try await withThrowingTaskGroup(of: Measurement?.self) { group -> Measurement in
            group.addTask {
                while ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(80))
                    let begin = ContinuousClock.now
                    try await guardFortress.lockdown()
                    lockdowns.withLock { $0.append(ContinuousClock.now - begin) }
                    try await Task.sleep(for: .milliseconds(20))
                    try await guardFortress.unlock()
                }
                return nil
            }
            group.addTask {
                let fortresses = guests.map { Fortress(session: $0, prefix: prefix) }
                return try await self.timed(duration, tasks: fortresses.count, until: deadline) { guest, deadline, record in
                    while ContinuousClock.now < deadline {
                        let begin = ContinuousClock.now
                        try await fortresses[guest].visit {}
                        record(ContinuousClock.now - begin)
                    }
                }
            }
            var measured: Measurement?
            for try await value in group { if let value { measured = value } }
            return measured!
        }
        try await guardFortress.unlock()
        let locked = lockdowns.withLock { $0 }
        result.extra = "lockdown p50 \(percentile(locked, 50).map(format) ?? "-") (\(locked.count) lockdowns)"
        return result
    }
}

private func secondsOf(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

private func percentile(_ samples: [Duration], _ p: Int) -> Duration? {
    guard !samples.isEmpty else { return nil }
    let sorted = samples.sorted()
    return sorted[min(sorted.count - 1, sorted.count * p / 100)]
}

private func format(_ duration: Duration) -> String {
    let micros = secondsOf(duration) * 1e6
    return micros >= 10_000 ? String(format: "%.1f ms", micros / 1000) : String(format: "%.0f µs", micros)
}

/// Mutable state shared by benchmark tasks.
final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}
