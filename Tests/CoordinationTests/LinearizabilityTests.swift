import Coordination
import Foundation
import RedisClient
import Synchronization
import Testing

/// The checker on histories whose answer is known, then recorded histories of
/// puts, gets and compare-and-set txns from concurrent clients under faults.
@Suite struct LinearizabilityTests {
    typealias L = Linearizability

    static func op(_ input: L.Input, _ output: L.Output?, _ call: UInt64, _ response: UInt64?) -> L.Operation {
        op(on: "k", input, output, call, response)
    }

    static func op(on key: String, _ input: L.Input, _ output: L.Output?, _ call: UInt64, _ response: UInt64?) -> L.Operation {
        L.Operation(key: key, input: input, output: output, call: call, response: response ?? .max)
    }

    @Test func theCheckerAcceptsLinearizableHistoriesAndRejectsOthers() {
        // Sequential, and a read concurrent with the write it may or may not see.
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.get, .get("a"), 20, 30)]).isEmpty)
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.get, .get(nil), 5, 30)]).isEmpty)
        // A read that starts after an acknowledged write and does not see it: a lost write.
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.get, .get(nil), 20, 30)]) == ["k"])
        // The explanation ends at the first operation that cannot be placed.
        let explained = L.explain([Self.op(.put("a"), .put, 0, 10), Self.op(.get, .get(nil), 20, 30), Self.op(.get, .get("a"), 40, 50)], key: "k")
        #expect(explained.hasPrefix("k: 3 operations, the first 2 not linearizable"), "\(explained)")
        #expect(explained.hasSuffix("get → get(nil)"), "\(explained)")
        // Reads going back in time.
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.put("b"), .put, 0, 10),
                              Self.op(.get, .get("b"), 20, 30), Self.op(.get, .get("a"), 40, 50)]) == ["k"])
        // A write whose reply was lost may have taken effect late, or never.
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.put("b"), nil, 15, nil),
                              Self.op(.get, .get("a"), 20, 30), Self.op(.get, .get("b"), 40, 50)]).isEmpty)
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.put("b"), nil, 15, nil), Self.op(.get, .get("a"), 20, 30)]).isEmpty)
        #expect(L.violations([Self.op(.put("a"), .put, 0, 10), Self.op(.put("b"), nil, 15, nil),
                              Self.op(.get, .get("b"), 20, 30), Self.op(.get, .get("a"), 40, 50)]) == ["k"])
        // Two compare-and-sets from the same state cannot both succeed.
        #expect(L.violations([Self.op(.compareAndSet(expected: nil, new: "x"), .compareAndSet(true), 0, 10),
                              Self.op(.compareAndSet(expected: nil, new: "y"), .compareAndSet(true), 20, 30)]) == ["k"])
        #expect(L.violations([Self.op(.compareAndSet(expected: nil, new: "x"), .compareAndSet(true), 0, 30),
                              Self.op(.compareAndSet(expected: nil, new: "y"), .compareAndSet(false), 5, 20),
                              Self.op(.get, .get("x"), 40, 50)]).isEmpty)
        // Keys are checked apart: only the broken one is named.
        #expect(L.violations([Self.op(on: "a", .put("1"), .put, 0, 10), Self.op(on: "a", .get, .get("1"), 20, 30),
                              Self.op(on: "b", .put("1"), .put, 0, 10), Self.op(on: "b", .get, .get(nil), 20, 30)]) == ["b"])
    }

    /// Clients, each with a connection of its own, run random puts, gets and
    /// compare-and-sets on three keys until `stop` says so (given how many operations
    /// were recorded); every put writes a value of its own.
    static func connect(url: String, clients: Int, durability: CoordinationClient.Durability? = nil) async throws -> [CoordinationClient] {
        var stores: [CoordinationClient] = []
        for _ in 0..<clients { stores.append(try await CoordinationClient.connect(url: url, durability: durability)) }
        return stores
    }

    static func record(_ stores: [CoordinationClient], until stop: @escaping @Sendable (_ recorded: Int) -> Bool) async -> [L.Operation] {
        let recorder = L.Recorder()
        await withTaskGroup(of: Void.self) { group in
            for (client, store) in stores.enumerated() {
                group.addTask {
                    var sequence = 0
                    var lastSeen: [String: String] = [:]
                    while !stop(recorder.count) {
                        let key = "k\(Int.random(in: 0..<3))"
                        sequence += 1
                        let value = "\(client).\(sequence)"
                        // A compare-and-set expects the value this client saw last.
                        let output: L.Output?
                        switch Int.random(in: 0..<3) {
                        case 0:
                            output = await recorder.perform(store, key: key, .put(value))
                            if output != nil { lastSeen[key] = value }
                        case 1:
                            output = await recorder.perform(store, key: key, .get)
                            if case .get(let seen)? = output { lastSeen[key] = seen }
                        default:
                            output = await recorder.perform(store, key: key, .compareAndSet(expected: lastSeen[key], new: value))
                            if case .compareAndSet(true)? = output { lastSeen[key] = value }
                        }
                        // After a failed request (Redis away, replicas not there yet), a
                        // pause: every lost reply widens the checker's search.
                        try? await Task.sleep(for: .milliseconds(output == nil ? 300 : 2))
                    }
                }
            }
        }
        for store in stores { await store.close() }
        return recorder.history
    }

    /// When a fault happened, for the recording's stop condition.
    final class Moment: Sendable {
        let instant = Mutex<ContinuousClock.Instant?>(nil)
        func set() { instant.withLock { $0 = .now } }
        /// Whether `duration` has passed since the moment (false before it).
        func passed(_ duration: Duration) -> Bool { instant.withLock { $0.map { ContinuousClock.now - $0 > duration } ?? false } }
    }

    /// Checks a recorded history across one fault, and prints its figures.
    static func expectLinearizable(_ history: [L.Operation], _ title: String, recordedIn duration: Duration) {
        let checking = ContinuousClock.now
        let violations = L.violations(history)
        let explanation = violations.map { L.explain(history, key: $0) }.joined(separator: "\n")
        #expect(violations.isEmpty, "not linearizable on \(violations)\n\(explanation)")
        #expect(history.count > 100)
        let unknown = history.filter { $0.output == nil }.count
        print("linearizability, \(title): \(history.count) operations (\(unknown) with a lost reply) on 3 keys in \(duration), 1 fault, \(violations.count) violations (checked in \(ContinuousClock.now - checking))")
    }

    @Test func aHistoryAcrossAKillWithAppendfsyncAlwaysIsLinearizable() async throws {
        try await RedisServer.withServer(.init(appendOnly: true, appendFsync: "always")) { server in
            let started = ContinuousClock.now
            let stores = try await Self.connect(url: server.url, clients: 6)
            let killed = Moment()
            let recording = Task { await Self.record(stores) { killed.passed(.seconds(2)) && $0 >= 1_000 || killed.passed(.seconds(60)) } }
            try await Task.sleep(for: .seconds(1))
            try await server.restart()   // SIGKILL mid-stream; the AOF brings everything back
            killed.set()
            let history = await recording.value
            Self.expectLinearizable(history, "kill -9 with appendfsync always", recordedIn: ContinuousClock.now - started)
        }
    }

    /// The recording and the checker together catch a real loss: Redis restarted
    /// without persistence (a store reset) forgets acknowledged puts.
    @Test func aHistoryAcrossARestartThatLosesTheDataIsNotLinearizable() async throws {
        try await RedisServer.withServer { server in
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            let recorder = L.Recorder()
            for key in ["k0", "k1", "k2"] { #expect(await recorder.perform(store, key: key, .put("v")) == .put) }
            try await server.restart()   // no AOF, no RDB: everything is gone
            // The first request after the restart learns of the reset; then reads.
            _ = try? await store.currentRevision()
            for key in ["k0", "k1", "k2"] { #expect(await recorder.perform(store, key: key, .get) == .get(nil)) }
            let violations = L.violations(recorder.history)
            #expect(violations == ["k0", "k1", "k2"], "a history across a data loss passed as linearizable")
            // The explanation ends at the read that missed the acknowledged put.
            let explained = L.explain(recorder.history, key: "k0")
            #expect(explained.hasPrefix("k0: 2 operations, the first 2 not linearizable") && explained.hasSuffix("get → get(nil)"), "\(explained)")
        }
    }

    @Test func aHistoryAcrossASentinelFailoverWithWaitIsLinearizable() async throws {
        // One replica and WAIT 1, so that the promoted replica confirmed every
        // acknowledged write; the killed master comes back as its replica.
        try await RedisSentinelGroup.withGroup(replicas: 1, sentinels: 3) { group in
            let started = ContinuousClock.now
            let stores = try await Self.connect(url: group.url, clients: 6, durability: .init(replicas: 1, timeout: .seconds(1)))
            let recovered = Moment()
            let recording = Task { await Self.record(stores) { recovered.passed(.seconds(2)) && $0 >= 1_000 || recovered.passed(.seconds(60)) } }
            try await Task.sleep(for: .seconds(1))
            let killed = try await group.killMaster()
            _ = try await group.waitForFailover(from: killed)
            try await group.rejoin(killed)
            recovered.set()
            let history = await recording.value
            Self.expectLinearizable(history, "sentinel failover with WAIT 1", recordedIn: ContinuousClock.now - started)
        }
    }
}
