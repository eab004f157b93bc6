import ArgumentParser
import Coordination
import Foundation
import Synchronization

/// `coordbench kv`: the store's put, get and compare-and-swap throughput, the Redis
/// ceiling for the same put script, and Redis memory per live key.
struct KVBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv",
        abstract: "Measure the etcd-semantics store: put, get, txn compare-and-swap, the Redis ceiling and memory per key.",
        discussion: """
            --clients concurrent clients share one pipelined connection. put writes random keys \
            of a --keys key space with --value-size values; get reads them; cas runs \
            txn(compare mod_revision == last seen, put) on a key per client, so every txn succeeds. \
            The ceiling is `redis-benchmark -c <clients>` running the same put script as the store \
            runs it, by FCALL (EVALSHA where Redis has no functions or the user may not load one): \
            the whole script (revision, history, event log). Memory is Redis used_memory per \
            live key after --memory-keys puts and a compaction, in a namespace of its own.

            Without --url (or $REDIS_URL) a private redis-server is started on a loopback port \
            and stopped at the end. With --url the namespace --namespace is written to.

            Every figure printed is measured in the run. For etcd 3.4 measured side by side \
            with the same workloads through etcd's Go client, run scripts/loadtest.sh (its \
            etcd section); --json writes these results for its report ("Swift library direct").
            """
    )

    @Option(help: "Redis URL of the server to measure (default: $REDIS_URL, else a private redis-server).")
    var url: String?

    @Option(help: "Concurrent clients.")
    var clients = 16

    @Option(help: "Requests per run.")
    var requests = 100_000

    @Option(help: "Runs per workload; the table shows medians.")
    var rounds = 3

    @Option(help: "Distinct keys for put and get.")
    var keys = 10_000

    @Option(help: "Value size in bytes.")
    var valueSize = 64

    @Option(help: "Keys for the memory measurement (0 skips it).")
    var memoryKeys = 100_000

    @Option(help: "Namespace to write to.")
    var namespace = "bench"

    @Option(help: ArgumentHelp("Also write the results to this JSON file (loadgen's format, label \"Swift library direct\"; merged with the file's results if it exists).", valueName: "file"))
    var json: String?

    func validate() throws {
        guard clients >= 1, requests >= clients, rounds >= 1, keys >= 1, valueSize >= 0, memoryKeys >= 0 else {
            throw ValidationError("--clients, --rounds and --keys must be at least 1, --requests at least --clients")
        }
    }

    func run() async throws {
        try await withBenchmarkServer(url: url) { configuration in
            try await measure(configuration)
        }
    }

    private func measure(_ configuration: RedisConfiguration) async throws {
        let connection = try await RedisConnection.connect(configuration)
        let store = CoordinationClient(redis: connection, namespace: namespace)
        let value = [UInt8](repeating: UInt8(ascii: "v"), count: valueSize)
        let keySpace = (0..<keys).map { Array("bench/key-\($0)".utf8) }
        let keyCount = keys

        log("loading \(keys) keys")
        _ = try await measureLoad(tasks: clients, requests: keys) { task, index in
            let position = task * (keyCount / clients) + index
            if position < keyCount { _ = try await store.put(keySpace[position], value) }
        }

        var rows: [Row] = []
        func workload(_ name: String, _ operation: @escaping @Sendable (Int, Int) async throws -> Void) async throws {
            var results: [RunResult] = []
            for round in 1...rounds {
                log("\(name): round \(round) of \(rounds)")
                results.append(try await measureLoad(tasks: clients, requests: requests, operation))
            }
            rows.append(Row(command: name, client: "CoordinationClient, \(clients) clients", result: RunResult.median(results)))
        }

        try await workload("put") { task, index in
            _ = try await store.put(keySpace[(task &* 7919 &+ index &* 104_729) % keyCount], value)
        }
        try await workload("get") { task, index in
            _ = try await store.get(keySpace[(task &* 7919 &+ index &* 104_729) % keyCount])
        }
        let casKeys = (0..<clients).map { Array("bench/cas-\($0)".utf8) }
        let lastMod = Mutex<[Int64]>([Int64](repeating: 0, count: clients))
        for (index, key) in casKeys.enumerated() {
            let revision = try await store.put(key, value).header.revision
            lastMod.withLock { $0[index] = revision }
        }
        try await workload("cas") { task, _ in
            let expected = lastMod.withLock { $0[task] }
            let txn = Txn(compares: [Compare(key: casKeys[task], .modRevision(expected), .equal)],
                          success: [.put(key: casKeys[task], value: value, options: PutOptions())])
            let response = try await store.txn(txn)
            if response.succeeded {
                lastMod.withLock { $0[task] = response.header.revision }
            } else {
                let current = try await store.get(casKeys[task]).kvs.first?.modRevision ?? 0
                lastMod.withLock { $0[task] = current }
            }
        }

        rows.append(try await measureWatchLatency(store, value: value))

        // The ceiling: redis-benchmark running the same put script as the store does: by
        // FCALL, or by EVALSHA where the function cannot be loaded.
        _ = try await connection.send(["SCRIPT", "LOAD", CoordinationClient.kvScriptSource].map { Array($0.utf8) })
        var call = ["EVALSHA", CoordinationClient.kvScriptSHA1]
        let scriptKeys = CoordinationClient.redisKeys(namespace).map { String(decoding: $0, as: UTF8.self) }
        let request = CoordinationClient.encodedRequest(.put(key: Array("bench/ceiling".utf8), value: value, options: PutOptions()))
        do {
            do {
                _ = try await connection.send(["FUNCTION", "LOAD", CoordinationClient.kvFunctionLibrary].map { Array($0.utf8) })
            } catch let error as RedisError where error.message.contains("already exists") {
            }
            // One call first: a user may load functions and not be allowed to call them.
            _ = try await connection.send(["FCALL", CoordinationClient.kvFunctionName, String(scriptKeys.count)].map { Array($0.utf8) }
                                          + scriptKeys.map { Array($0.utf8) } + [request])
            call = ["FCALL", CoordinationClient.kvFunctionName]
        } catch {
            log("the ceiling runs the script by EVALSHA: Redis refused the function (\(error))")
        }
        var ceilings: [RunResult] = []
        for round in 1...rounds {
            log("ceiling (redis-benchmark \(call[0]) put): round \(round) of \(rounds)")
            let arguments = redisBenchmarkConnectionArguments(configuration)
                + ["-c", String(clients), "-n", String(requests), "-x"] + call + [String(scriptKeys.count)] + scriptKeys
            guard let result = try redisBenchmark(arguments, stdin: request, test: call[0]) else { break }
            ceilings.append(result)
        }
        if !ceilings.isEmpty {
            rows.append(Row(command: "put", client: "ceiling: redis-benchmark -c \(clients) \(call[0])", result: RunResult.median(ceilings)))
        }

        var memoryLine = "memory: skipped (--memory-keys 0)"
        if memoryKeys > 0 {
            memoryLine = try await measureMemory(connection, value: value)
        }
        await connection.close()
        printReport(rows, memoryLine: memoryLine, configuration: configuration)
    }

    /// One writer puts at a steady pace; 16 watchers of one client receive every event.
    /// Latency: from just before the put is sent to the event's arrival at a watcher.
    private func measureWatchLatency(_ store: CoordinationClient, value: [UInt8]) async throws -> Row {
        let watchers = 16, puts = 2_000
        log("watch: 1 writer, \(watchers) watchers, \(puts) puts at about 1,000/s")
        let start = try await store.get("bench/watch").header.revision + 1
        let sent = SendTimes()
        let clock = ContinuousClock()
        let streams = (0..<watchers).map { _ in store.watch("bench/watch", options: WatchOptions(startRevision: start)) }
        let receivers = streams.map { stream in
            Task { () -> [Duration] in
                var latencies: [Duration] = []
                for try await response in stream {
                    let now = clock.now
                    for event in response.events {
                        if let at = sent.times.withLock({ $0[event.kv.modRevision] }) { latencies.append(now - at) }
                    }
                    if latencies.count >= puts { break }
                }
                return latencies
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        var expected = start
        for _ in 0..<puts {
            let began = clock.now
            sent.times.withLock { $0[expected] = began }
            let revision = try await store.put(Array("bench/watch".utf8), value).header.revision
            if revision != expected {
                // Another writer interleaved: re-key the send time.
                sent.times.withLock { $0[revision] = began }
            }
            expected = revision + 1
            try await Task.sleep(until: began + .milliseconds(1))
        }
        var all: [Duration] = []
        for receiver in receivers { all += try await receiver.value }
        all.sort()
        func micros(_ duration: Duration) -> Double { Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12 }
        let result = RunResult(opsPerSecond: Double(puts),
                               p50Micros: micros(all[all.count / 2]), p99Micros: micros(all[min(all.count - 1, all.count * 99 / 100)]))
        return Row(command: "watch", client: "1 writer -> \(watchers) watchers (latency)", result: result)
    }

    /// Puts `memoryKeys` keys into a fresh namespace, compacts, and reports used_memory per key.
    private func measureMemory(_ connection: RedisConnection, value: [UInt8]) async throws -> String {
        func usedMemory() async throws -> Double {
            let info = try await connection.send("INFO", "memory").string ?? ""
            let line = info.split(separator: "\r\n").first { $0.hasPrefix("used_memory:") }
            return Double(line?.dropFirst("used_memory:".count) ?? "0") ?? 0
        }
        let memoryNamespace = namespace + "-memory"
        let store = CoordinationClient(redis: connection, namespace: memoryNamespace)
        let leftovers = (try await connection.send("KEYS", "{\(memoryNamespace)}:*").array ?? []).compactMap(\.bytes)
        if !leftovers.isEmpty { _ = try await connection.send([Array("DEL".utf8)] + leftovers) }
        let before = try await usedMemory()
        log("memory: putting \(memoryKeys) keys of \(value.count) bytes")
        let count = memoryKeys
        let perTask = (count + clients - 1) / clients
        _ = try await measureLoad(tasks: clients, requests: perTask * clients) { task, index in
            let position = task * perTask + index
            if position < count { _ = try await store.put(Array("mem/key-\(position)".utf8), value) }
        }
        let revision = try await store.get("mem/key-0").header.revision
        log("memory: compacting at revision \(revision)")
        try await store.compact(revision)
        let after = try await usedMemory()
        let perKey = (after - before) / Double(memoryKeys)
        let leftoversAfter = (try await connection.send("KEYS", "{\(memoryNamespace)}:*").array ?? []).compactMap(\.bytes)
        _ = try await connection.send([Array("DEL".utf8)] + leftoversAfter)
        return String(format: "memory: %.0f bytes of Redis used_memory per live key (%d keys, %d-byte values, after compaction)", perKey, memoryKeys, value.count)
    }

    private func printReport(_ rows: [Row], memoryLine: String, configuration: RedisConfiguration) {
        print("")
        print("KV benchmark: \(clients) clients on one pipelined connection, \(requests) requests per run, \(valueSize)-byte values, \(keys) keys, median of \(rounds) runs")
        print("server: \(configuration.redactedURL), namespace \(namespace); machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("")
        let header = pad("workload", 10) + pad("client", 44) + lpad("ops/s", 10) + lpad("p50 µs", 10) + lpad("p99 µs", 10)
        print(header)
        print(String(repeating: "-", count: header.count))
        for row in rows {
            print(pad(row.command, 10) + pad(row.client, 44) + lpad(String(Int(row.result.opsPerSecond)), 10)
                  + lpad(String(format: "%.0f", row.result.p50Micros), 10) + lpad(String(format: "%.0f", row.result.p99Micros), 10))
        }
        print("")
        let put = rows.first { $0.command == "put" && $0.client.hasPrefix("Coordination") }?.result.opsPerSecond
        let ceiling = rows.first { $0.client.hasPrefix("ceiling") }?.result.opsPerSecond
        if let put, let ceiling { print("put: \(percent(put / ceiling)) of the ceiling") }
        if let watch = rows.first(where: { $0.command == "watch" }) {
            print(String(format: "watch: delivery p50 %.0f µs, p99 %.0f µs; the ops/s column is the number of puts", watch.result.p50Micros, watch.result.p99Micros))
        }
        print(memoryLine)
        if let json {
            let names = ["put": "put", "get": "get", "cas": "txn", "watch": "watch"]
            let results = rows.filter { $0.client.hasPrefix("Coordination") || $0.command == "watch" }.compactMap { row -> LibraryResult? in
                guard let name = names[row.command] else { return nil }
                return LibraryResult(workload: name, opsPerSecond: row.result.opsPerSecond, p50Micros: row.result.p50Micros, p99Micros: row.result.p99Micros)
            }
            do {
                try writeLibraryResults(results, to: json, notes: "coordbench kv: \(clients) clients on one pipelined connection, \(valueSize)-byte values, median of \(rounds) runs")
                log("wrote \(json)")
            } catch {
                log("could not write \(json): \(error)")
            }
        }
    }
}

/// When each watched revision's put was sent, shared by the writer and the watchers.
final class SendTimes: Sendable {
    let times = Mutex<[Int64: ContinuousClock.Instant]>([:])
}
