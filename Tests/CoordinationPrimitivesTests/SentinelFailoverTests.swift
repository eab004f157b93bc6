import CoordinationPrimitives
import Foundation
import RedisClient
import Synchronization
import Testing

/// Fault tests under Redis Sentinel: real redis-sentinel processes, a master and
/// replicas on loopback, the master killed with SIGKILL while 8 lock-takers (each
/// a client of its own, through `redis-sentinel://`) write to a protected resource
/// through a fencing check.
@Suite(.serialized) struct SentinelFailoverTests {
    /// The protected resource's fencing check (a Redis of its own, not part of the
    /// group): a write carries its writer's fencing token and is applied only if no
    /// higher token was seen; accepted writes are logged in order.
    static let fence = """
        local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
        if tonumber(ARGV[1]) < highest then return 0 end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('RPUSH', KEYS[2], ARGV[2])
        return 1
        """

    final class Figures: Sendable {
        struct Values {
            var operations = 0
            var fencedWrites = 0
            var fencedRejected = 0
            var tokens: [Int64] = []
            var acknowledged: [String] = []
            var resets = 0
            /// When each fault was injected, and the first acknowledged put after it.
            var faults: [ContinuousClock.Instant] = []
            var recovered: [ContinuousClock.Instant?] = []
            var stop = false
            /// The newest revision the live watch delivered.
            var watched: Int64 = 0
        }
        let values = Mutex(Values())
    }

    struct Outcome {
        var operations: Int
        var lost: [String]
        var overlaps: Int
        var rejected: Int
        var resets: Int
        var recoveries: [Duration]
        var tokensRepeated: Int
        /// Accepted writes whose token was below one accepted before them.
        var staleAccepted: Int
        /// Whether the live watch delivered exactly the store's history, or how it ended.
        var watchMatched: Bool
        var watchEnded: String?
        var watchEvents: Int
    }

    /// Runs 8 lock-takers against `group` while `faults` masters are killed, and checks
    /// the store and the resource afterwards.
    /// With `lagReplicas`, before each kill the replicas fall behind: stopped (SIGSTOP)
    /// while a 16 MiB value fills the replication socket's buffers, so that the puts
    /// acknowledged after it never leave the master; they are resumed once it is dead.
    static func run(group: RedisSentinelGroup, replicas: Int, durability: CoordinationClient.Durability?, faults: Int,
                    lagReplicas: Bool = false) async throws -> Outcome {
        try await RedisServer.withServer { resource in
            let fenced = try await RedisConnection.connect(resource.configuration)
            defer { Task { await fenced.close() } }
            let figures = Figures()
            var clients: [CoordinationClient] = []
            for _ in 0..<8 {
                let client = try await CoordinationClient.connect(url: group.url, durability: durability)
                _ = client.onStoreReset { _ in figures.values.withLock { $0.resets += 1 } }
                clients.append(client)
            }
            let background = Task { try await clients[0].run(interval: .milliseconds(100)) }
            defer { background.cancel() }
            // A watch of the protected puts, live across the failovers, through a client
            // of its own.
            let watcher = try await CoordinationClient.connect(url: group.url, durability: durability)
            let from = try await watcher.currentRevision() + 1
            let watched = Task { () -> (revisions: [Int64], error: (any Error)?) in
                var revisions: [Int64] = []
                do {
                    for try await response in watcher.watch("acked/", options: .prefix(Array("acked/".utf8), startRevision: from)) {
                        revisions += response.events.map(\.kv.modRevision)
                        figures.values.withLock { $0.watched = revisions.last ?? 0 }
                    }
                    return (revisions, nil)
                } catch {
                    return (revisions, Task.isCancelled ? nil : error)
                }
            }

            let takers = clients.enumerated().map { index, client in
                Task { await Self.take(client, index: index, fenced: fenced, figures: figures) }
            }

            func operations() -> Int { figures.values.withLock { $0.operations } }
            for fault in 0..<faults {
                let target = operations() + 30
                #expect(await eventually(timeout: .seconds(120)) { operations() >= target }, "the lock-takers stalled before fault \(fault + 1)")
                if fault > 0 { try await group.waitUntilReady(replicas: replicas) }
                var lagging: [RedisServer] = []
                if lagReplicas {
                    let master = try await group.master()
                    lagging = group.servers.filter { $0 !== master && $0.pid > 0 }
                    for replica in lagging { kill(replica.pid, SIGSTOP) }
                    let direct = try await RedisConnection.connect(master.configuration)
                    try await direct.send("SET", "filler", [UInt8](repeating: 0x78, count: 16 << 20))
                    await direct.close()
                    let behind = operations() + 5
                    #expect(await eventually(timeout: .seconds(30)) { operations() >= behind }, "no puts while the replicas were stopped")
                }
                let victim = try await group.killMaster()   // returns once the process is gone
                for replica in lagging { kill(replica.pid, SIGCONT) }
                figures.values.withLock {
                    $0.faults.append(.now)
                    $0.recovered.append(nil)
                }
                // Once the sentinels have promoted its replica, the killed master comes back
                // (empty, it has no persistence) as the new master's replica, as such a
                // node must (restarted as a master, it could be promoted empty before the
                // sentinels made it a replica and had it resync: a CI run lost every
                // acknowledged put that way): with WAIT, writes wait for it.
                _ = try await group.waitForFailover(from: victim)
                try await group.rejoin(victim)
            }
            let target = operations() + 30
            #expect(await eventually(timeout: .seconds(120)) { operations() >= target }, "the lock-takers stalled after the last fault")
            figures.values.withLock { $0.stop = true }
            for taker in takers { _ = await taker.value }

            // Every acknowledged put is in the store.
            let checker = try await CoordinationClient.connect(url: group.url)
            defer { Task { await checker.close() } }
            let stored = Set(try await checker.get("acked/", options: .prefix(Array("acked/".utf8))).kvs.map { String(decoding: $0.key, as: UTF8.self) })
            let values = figures.values.withLock { $0 }
            let lost = values.acknowledged.filter { !stored.contains($0) }
            // The live watch saw the store's history of acked/ exactly: no gap, no repeat.
            let last = try await checker.get("acked/", options: .prefix(Array("acked/".utf8))).kvs.map(\.modRevision).max() ?? 0
            let caughtUp = await eventually(timeout: .seconds(60)) { figures.values.withLock { $0.watched } >= last }
            watched.cancel()
            let (live, watchError) = await watched.value
            await watcher.close()
            var history: [Int64] = []
            if caughtUp && watchError == nil {
                for try await response in checker.watch("acked/", options: .prefix(Array("acked/".utf8), startRevision: from)) {
                    history += response.events.map(\.kv.modRevision)
                    if (history.last ?? 0) >= last { break }
                }
            }
            // The resource's accepted writes: each critical section closes (exit or
            // abandon) before another token enters; a section another holder entered is an
            // overlap that the fence caught (the holder's later writes were rejected).
            let log = (try await fenced.send("LRANGE", "fence:log", "0", "-1").array ?? []).compactMap(\.string)
            var open: String?
            var overlaps = 0
            var previous: Int64 = 0
            var staleAccepted = 0
            for entry in log {
                let parts = entry.split(separator: " ")
                let token = Int64(parts[2]) ?? 0
                if token < previous { staleAccepted += 1 }
                previous = max(previous, token)
                if parts[0] == "enter" {
                    if open != nil { overlaps += 1 }
                    open = String(parts[2])
                } else if open == String(parts[2]) {
                    open = nil
                }
            }
            for client in clients { await client.close() }
            let recoveries = zip(values.faults, values.recovered).map { fault, recovered in (recovered ?? .now) - fault }
            return Outcome(operations: values.operations, lost: lost, overlaps: overlaps, rejected: values.fencedRejected, resets: values.resets,
                           recoveries: recoveries, tokensRepeated: values.tokens.count - Set(values.tokens).count, staleAccepted: staleAccepted,
                           watchMatched: caughtUp && watchError == nil && live == history, watchEnded: watchError.map { "\($0)" }, watchEvents: live.count)
        }
    }

    /// One write through the fence; true if applied.
    static func fencedWrite(_ fenced: RedisConnection, _ figures: Figures, _ token: Int64, _ entry: String) async -> Bool {
        while true {
            if let applied = try? await fenced.send("EVAL", fence, "2", "fence:highest", "fence:log", String(token), entry).int {
                figures.values.withLock {
                    $0.fencedWrites += 1
                    if applied == 0 { $0.fencedRejected += 1 }
                }
                return applied == 1
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// One lock-taker: lock, a fenced enter, an acknowledged put, a fenced exit, unlock; again.
    static func take(_ client: CoordinationClient, index: Int, fenced: RedisConnection, figures: Figures) async {
        var session: Session?
        var round = 0
        while !figures.values.withLock({ $0.stop }) {
            do {
                if session == nil || session!.isDone { session = try await Session(client: client, ttl: 10) }
                let mutex = DistributedMutex(session: session!, prefix: "fenced-lock")
                _ = try await mutex.lock()
                let token = try #require(mutex.fencingToken)
                figures.values.withLock { $0.tokens.append(token) }
                round += 1
                let key = "acked/\(index)/\(round)"
                guard await fencedWrite(fenced, figures, token, "enter \(index) \(token)") else {
                    _ = try? await mutex.unlock()
                    continue
                }
                // The protected work: an acknowledged put, retried until it is
                // (a retried put that had been applied only writes the same value).
                var done = false
                while !done && !session!.isDone {
                    do {
                        _ = try await client.put(key, "v")
                        done = true
                    } catch {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                }
                if done {
                    figures.values.withLock { values in
                        values.acknowledged.append(key)
                        values.operations += 1
                        for (fault, at) in values.faults.enumerated() where values.recovered[fault] == nil && at < .now {
                            values.recovered[fault] = .now
                        }
                    }
                }
                _ = await fencedWrite(fenced, figures, token, "\(done ? "exit" : "abandon") \(index) \(token)")
                _ = try? await mutex.unlock()
            } catch {
                // Redis away, a failover under way, the session lost: start over.
                if let ended = session { try? await ended.close() }
                session = nil
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        if let session { try? await session.close() }
    }

    static func report(_ title: String, _ outcome: Outcome, faults: Int) {
        let sorted = outcome.recoveries.sorted()
        let median = sorted.isEmpty ? .zero : sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let each = outcome.recoveries.map { String(format: "%.2f s", Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18) }
        print("\(title): \(outcome.operations) locked operations by 8 lock-takers, \(faults) fault(s) (kill -9 of the master), recovery (kill to the next acknowledged put) \(each.joined(separator: ", ")): p50 \(median) max \(sorted.last ?? .zero), \(outcome.lost.count) acknowledged puts lost, \(outcome.overlaps) overlapping holders caught by the fence, \(outcome.rejected) stale-token writes rejected, \(outcome.staleAccepted) accepted, \(outcome.resets) store resets reported, \(outcome.tokensRepeated) tokens repeated, a live watch \(outcome.watchMatched ? "delivered all \(outcome.watchEvents) events in order" : "ended or differed (\(outcome.watchEnded ?? "a gap or a repeat"))")")
    }

    @Test func withWaitForOneReplicaAFailoverLosesNoAcknowledgedWriteAndNoLock() async throws {
        // One replica and WAIT 1: the replica the sentinels promote is one that
        // confirmed every acknowledged write. (With two replicas and WAIT 1 they may
        // promote the one that had not: a loss, reported as storeReset.)
        try await RedisSentinelGroup.withGroup(replicas: 1, sentinels: 3) { group in
            let outcome = try await Self.run(group: group, replicas: 1, durability: .init(replicas: 1, timeout: .seconds(1)), faults: 2)
            Self.report("sentinel failover with WAIT 1", outcome, faults: 2)
            if !outcome.lost.isEmpty || outcome.resets > 0 || outcome.overlaps > 0 {
                // For whoever reads a failed run: what the servers and sentinels did.
                print("sentinel failover with WAIT 1 failed; the group's logs:\n\(group.logs())")
            }
            #expect(outcome.lost.isEmpty, "acknowledged puts lost: \(outcome.lost)")
            #expect(outcome.overlaps == 0, "\(outcome.overlaps) lock hand-offs were lost (two holders at once)")
            #expect(outcome.tokensRepeated == 0)
            #expect(outcome.staleAccepted == 0)
            #expect(outcome.resets == 0, "a failover with WAIT 1 was taken for a store reset")
            #expect(outcome.watchMatched, "the live watch: \(outcome.watchEnded ?? "a gap or a repeat")")
        }
    }

    @Test func withoutWaitEveryLossIsReportedNeverSilent() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 1, sentinels: 3) { group in
            // The replica lags behind the master when it dies, so the failover loses the
            // last acknowledged puts, as asynchronous replication can.
            let outcome = try await Self.run(group: group, replicas: 1, durability: nil, faults: 1, lagReplicas: true)
            Self.report("sentinel failover without WAIT, to a lagging replica", outcome, faults: 1)
            #expect(!outcome.lost.isEmpty, "the promoted replica had every acknowledged put: the test lost nothing to detect")
            // The clients said so (the revision went back: storeReset), and the fence kept
            // a second holder's writes and the first one's apart.
            #expect(outcome.resets > 0, "\(outcome.lost.count) acknowledged puts were lost silently")
            #expect(outcome.overlaps == 0 || outcome.resets > 0, "two holders at once, silently")
            #expect(outcome.watchMatched || outcome.resets > 0, "the live watch missed or repeated events, silently: \(outcome.watchEnded ?? "")")
            #expect(outcome.tokensRepeated == 0)
            #expect(outcome.staleAccepted == 0)
        }
    }
}
