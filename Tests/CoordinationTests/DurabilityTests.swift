@testable import Coordination
import Foundation
import Synchronization
import Testing

/// Writes acknowledged only once replicas have them (Redis WAIT), against a real
/// master and replica on loopback.
@Suite struct DurabilityTests {
    @Test func aWriteWaitsForItsReplicaAndIsOutcomeUnknownWhenTheReplicaDoesNotConfirmIt() async throws {
        try await withMasterAndReplica { master, replica, admin in
            // The timeout only bounds how long a stopped replica is waited for; a short one
            // fails requests that must succeed (connect's reads included) on a loaded machine.
            let store = try await CoordinationClient.connect(url: master.url, durability: .init(replicas: 1, timeout: .seconds(3)))
            defer { Task { await store.close() } }
            #expect(try await store.status().connectedReplicas == 1)
            _ = try await store.put("durable", "1")   // confirmed by the replica
            #expect(try await admin.send([Array("HEXISTS".utf8), Array("{coord}:kv".utf8), Array("durable".utf8)]).int == 1)

            // A replica that does not answer: the write is applied on the master, but
            // never reported as done.
            kill(replica.pid, SIGSTOP)
            defer { kill(replica.pid, SIGCONT) }
            let outcome = await redisError { _ = try await store.put("durable", "2") }
            #expect(outcome?.code == .outcomeUnknown, "the unconfirmed write was reported \(String(describing: outcome))")
            #expect(outcome?.message.contains("reached 0 of the 1 replica(s)") == true, "\(String(describing: outcome))")
            // Nor is a read of it: what a read returns must survive a failover too.
            let read = await redisError { _ = try await store.get("durable") }
            #expect(read?.code == .outcomeUnknown && read?.message.contains("the read saw writes that have not reached 1 replica(s)") == true,
                    "a read of an unreplicated write was answered: \(String(describing: read))")
            // Once the replica has it, the read answers.
            kill(replica.pid, SIGCONT)
            #expect(try await store.get("durable").kvs.first?.valueString == "2")
        }
    }
}

extension DurabilityTests {
    /// A watcher is given a revision only once the replicas have it (as etcd's see only
    /// committed ones), so a failover cannot take back an event it was given; and what
    /// the reader saw of an unreplicated write does not count as seen either.
    @Test func aWatchIsGivenOnlyRevisionsItsReplicaHas() async throws {
        try await withMasterAndReplica { master, replica, _ in
            // Generous, as above: the watch reader's WAIT returns as soon as the replica
            // acknowledges, so the length only matters while the replica is stopped.
            let store = try await CoordinationClient.connect(url: master.url, durability: .init(replicas: 1, timeout: .seconds(3)))
            defer { Task { await store.close() } }
            // A client without durability, whose writes nobody waits for.
            let writer = try await CoordinationClient.connect(url: master.url)
            defer { Task { await writer.close() } }
            let seen = Mutex<[Int64]>([])
            let watch = Task {
                for try await response in store.watch("w/", options: .prefix(Array("w/".utf8))) {
                    seen.withLock { $0.append(contentsOf: response.events.map(\.kv.modRevision)) }
                }
            }
            defer { watch.cancel() }
            // The watch is live once it delivers a replicated write.
            var live: Int64 = 0
            let delivered = await eventually(timeout: .seconds(20)) {
                if live == 0 || seen.withLock({ !$0.contains(live) }) {
                    live = (try? await store.put("w/live", "\(live)").header.revision) ?? 0
                    try? await Task.sleep(for: .milliseconds(200))
                }
                return live > 0 && seen.withLock { $0.contains(live) }
            }
            #expect(delivered, "the watch never delivered a replicated write")

            kill(replica.pid, SIGSTOP)
            defer { kill(replica.pid, SIGCONT) }
            let unreplicated = try await writer.put("w/unreplicated", "x").header.revision
            try await Task.sleep(for: .milliseconds(1500))
            #expect(!seen.withLock { $0.contains(unreplicated) }, "the watcher was given revision \(unreplicated), which its replica did not have")
            #expect(store.incarnation.withLock { $0.highest } < unreplicated, "the reader counted revision \(unreplicated) as seen before its replica had it")

            kill(replica.pid, SIGCONT)
            #expect(await eventually(timeout: .seconds(20)) { seen.withLock { $0.contains(unreplicated) } },
                    "the write was not delivered once the replica had it")
            #expect(seen.withLock { $0 } == seen.withLock { $0 }.sorted())
        }
    }

    /// A lease kept alive in the background (a Session's) is a write too: its refreshes
    /// count as confirmed only once WAIT says the replica has them, so a lease that a
    /// failover could take back ends `unconfirmed` instead of looking alive.
    @Test func aBackgroundKeepAliveIsConfirmedOnlyOnceItsReplicaHasIt() async throws {
        try await withMasterAndReplica { master, replica, _ in
            let store = try await CoordinationClient.connect(url: master.url, durability: .init(replicas: 1, timeout: .seconds(1)))
            defer { Task { await store.close() } }
            let direct = try await RedisConnection.connect(master.configuration)
            defer { Task { await direct.close() } }

            let before = ContinuousClock.now
            // TTL 8: once the keep-alive ends unconfirmed, the master's lease has some 5 s
            // left for the check below to read (with 4, a loaded machine's delays between
            // the ending and that read could let it lapse).
            let lease = try await store.grantLease(ttl: 8)
            let kept = try await store.keepAliveInBackground(lease.id, ttl: 8, aliveSince: before)
            // The replica answering: refreshes are confirmed, the lease outlives two TTLs.
            try await Task.sleep(for: .seconds(17))
            #expect(kept.ending == nil, "ended \(String(describing: kept.ending)) with the replica answering")
            #expect(kept.lastConfirmed > before + .seconds(8))

            // The replica stopped: the master still takes the refreshes, but none is
            // confirmed, and the keep-alive ends unconfirmed about a TTL later.
            kill(replica.pid, SIGSTOP)
            defer { kill(replica.pid, SIGCONT) }
            let ending = await withTaskGroup(of: LeaseKeepAlive.Ending??.self) { group in
                group.addTask { .some(await kept.ended()) }
                group.addTask { try? await Task.sleep(for: .seconds(30)); return .none }
                let first = await group.next() ?? .none
                group.cancelAll()
                return first
            }
            #expect(ending == .some(.unconfirmed), "the keep-alive of an unreplicated lease ended \(String(describing: ending)) (nil: not within 30 s)")
            let remaining = try await direct.send([Array("PTTL".utf8), Array("{coord}:lease:\(lease.id)".utf8)]).int ?? -2
            #expect(remaining > 0, "the master no longer has the lease (PTTL \(remaining)): its refreshes were not sent")
        }
    }

    /// A master and a replica linked to it, both private; `admin` is a connection to the replica.
    /// A write whose confirmation fails after the script ran (here the barrier write is
    /// refused by an ACL; in a failover, the connection is lost between the two) is
    /// outcomeUnknown: reported as refused or not sent, a client would take a write that
    /// happened for one that did not (a CI run's linearizability check caught one).
    @Test func aWriteWhoseConfirmationFailsAfterItRanIsOutcomeUnknown() async throws {
        try await withMasterAndReplica { master, _, _ in
            let admin = try await RedisConnection.connect(master.configuration)
            defer { Task { await admin.close() } }
            func acl(_ words: String...) async throws { _ = try await admin.send(words.map { Array($0.utf8) }) }
            try await acl("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all")
            var configuration = master.configuration
            configuration.username = "app"
            configuration.password = "pw"
            let store = try await CoordinationClient.connect(configuration, durability: .init(replicas: 1, timeout: .seconds(3)))
            defer { Task { await store.close() } }
            _ = try await store.put("applied", "0")   // confirmed by the replica
            // From now on every key but the barrier's: the script runs, its barrier is refused.
            try await acl("ACL", "SETUSER", "app", "resetkeys", "~{coord}:[^b]*")
            let outcome = await redisError { _ = try await store.put("applied", "1") }
            #expect(outcome?.code == .outcomeUnknown, "a write that ran was reported \(String(describing: outcome))")
            let value = try await admin.send([Array("HGET".utf8), Array("{coord}:kv".utf8), Array("applied".utf8)]).bytes ?? []
            #expect(value.count > 0 && value.suffix(1) == Array("1".utf8), "the write did not run on the master")
        }
    }

    func withMasterAndReplica(_ body: (RedisServer, RedisServer, RedisConnection) async throws -> Void) async throws {
        try await RedisServer.withServer(.init(transport: .tcp())) { master in
            try await RedisServer.withServer(.init(transport: .tcp())) { replica in
                guard case .tcp(let host, let port) = master.endpoint else { return }
                let admin = try await RedisConnection.connect(replica.configuration)
                defer { Task { await admin.close() } }
                _ = try await admin.send([Array("REPLICAOF".utf8), Array(host.utf8), Array(String(port).utf8)])
                let linked = await eventually(timeout: .seconds(30)) {
                    (try? await admin.send([Array("INFO".utf8), Array("replication".utf8)]).string)?.contains("master_link_status:up") == true
                }
                #expect(linked, "the replica never linked to the master")
                try await body(master, replica, admin)
            }
        }
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
private func eventually(timeout: Duration, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}
