import CoordinationPrimitives
import Foundation
import RedisClient
import Synchronization
import Testing

/// Fault tests: Redis loses data behind the store's back (a restart without
/// persistence, a restore from an older snapshot) or loses nothing (a kill with
/// `appendfsync always`). Real redis-server processes, killed with SIGKILL.
@Suite struct StoreResetTests {
    /// Values shared between the test and its tasks (the last value each writer had
    /// acknowledged, the newest revision a watch delivered).
    final class Acknowledged: Sendable {
        let values = Mutex<[String: Int]>([:])
    }

    /// What one client of a reset store sees: how its watch, session and lock ended.
    struct Observers {
        let watch: Task<(events: [Int64], error: CoordinationError?), Never>
        let session: Session
        let mutex: DistributedMutex
        let token: Int64
        /// The revision of the put that showed the watch live (its only event).
        let probe: Int64
        /// The protected work, cancelled by the reset.
        let body: Task<(any Error)?, Never>
    }

    static func observe(_ store: CoordinationClient, prefix: String) async throws -> Observers {
        let from = try await store.currentRevision() + 1
        let stream = store.watch(prefix, options: .prefix(Array(prefix.utf8), startRevision: from))
        let (live, going) = AsyncStream.makeStream(of: Void.self)
        let watch = Task { () -> (events: [Int64], error: CoordinationError?) in
            var revisions: [Int64] = []
            do {
                for try await response in stream {
                    revisions += response.events.map(\.kv.modRevision)
                    going.yield()
                }
                return (revisions, nil)
            } catch let error as CoordinationError {
                return (revisions, error)
            } catch {
                Issue.record("the watch ended with \(error)")
                return (revisions, nil)
            }
        }
        // The watch is live once it has replayed or seen this put.
        let probe = try await store.put(prefix + "probe", "x").header.revision
        for await _ in live { break }
        let session = try await Session(client: store, ttl: 30)
        let mutex = DistributedMutex(session: session, prefix: "reset-lock")
        let token = try await mutex.lock()
        let (started, starting) = AsyncStream.makeStream(of: Void.self)
        let body = Task { () -> (any Error)? in
            do {
                try await mutex.withLock { _ in
                    starting.yield()
                    try await Task.sleep(for: .seconds(600))
                }
                return nil
            } catch {
                return error
            }
        }
        for await _ in started { break }
        return Observers(watch: watch, session: session, mutex: mutex, token: token, probe: probe, body: body)
    }

    /// Waits for every observer to end and checks they ended with storeReset.
    static func expectReset(_ observers: Observers, store: CoordinationClient, after fault: ContinuousClock.Instant) async throws {
        let ended = await eventually(timeout: .seconds(30)) { observers.session.isDone }
        #expect(ended && observers.session.endedBecause == .storeReset, "the session ended \(String(describing: observers.session.endedBecause))")
        let watched = await observers.watch.value
        #expect(watched.error?.code == .storeReset, "the watch ended with \(String(describing: watched.error))")
        let bodyError = await observers.body.value
        #expect((bodyError as? CoordinationError)?.code == .storeReset, "the protected work ended with \(String(describing: bodyError))")
        print("store reset detected: watch, session and lock ended \(ContinuousClock.now - fault) after the restart")
    }

    @Test func aRestartWithoutPersistenceEndsWatchesSessionsAndLocksWithStoreResetAndTokensStillIncrease() async throws {
        try await RedisServer.withServer { server in
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            for index in 0..<5 { _ = try await store.put("reset/\(index)", "old") }
            let observers = try await Self.observe(store, prefix: "reset/")
            try await server.restart()   // SIGKILL, then an empty Redis at the same address
            let restarted = ContinuousClock.now
            // The new history reuses revisions: two puts are revisions 2 and 3 again.
            let other = try await CoordinationClient.connect(url: server.url)
            defer { Task { await other.close() } }
            #expect(try await other.put("reset/new", "1").header.revision == 2)
            #expect(try await other.put("reset/new", "2").header.revision == 3)
            try await Self.expectReset(observers, store: store, after: restarted)
            // None of the new history's events reached the old watch.
            #expect(await observers.watch.value.events == [observers.probe])
            // A lock taken in the new history has a greater token than the lost one.
            let session = try await Session(client: store, ttl: 30)
            let token = try await DistributedMutex(session: session, prefix: "reset-lock").lock()
            #expect(token > observers.token, "token \(token) after the reset is not above \(observers.token) from before it")
            try await session.close()
        }
    }

    /// After a restart that lost the data, the store hands out no lease ID of the lost
    /// history, and a client of the lost history cannot end a lease of the new one: its
    /// session's close revokes nothing, and revoking an old ID finds no lease.
    @Test func aLeaseOfTheLostHistoryNeverNamesOneOfTheNewHistory() async throws {
        try await RedisServer.withServer { server in
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            let session = try await Session(client: store, ttl: 30)
            var lost = [session.lease]
            for _ in 0..<3 { lost.append(try await store.grantLease(ttl: 30).id) }
            try await server.restart()   // SIGKILL, then an empty Redis at the same address
            let other = try await CoordinationClient.connect(url: server.url)
            defer { Task { await other.close() } }
            var fresh: [Int64] = []
            for _ in 0..<4 { fresh.append(try await other.grantLease(ttl: 30).id) }
            #expect(Set(fresh).isDisjoint(with: lost), "lease IDs \(fresh) of the new history repeat ones of the lost history \(lost)")
            for (index, lease) in fresh.enumerated() { _ = try await other.put("held/\(index)", "new", options: PutOptions(lease: lease)) }
            let newSession = try await Session(client: other, ttl: 30)
            let held = try await DistributedMutex(session: newSession, prefix: "held-lock").lock()

            let ended = await eventually(timeout: .seconds(30)) { session.isDone }
            #expect(ended && session.endedBecause == .storeReset, "the lost history's session ended \(String(describing: session.endedBecause))")
            try await session.close()
            for lease in lost.dropFirst() {
                do {
                    _ = try await store.revokeLease(lease)
                    Issue.record("lost lease \(lease) was revoked in the new history")
                } catch let error as CoordinationError where error.code == .leaseNotFound || error.code == .storeReset {}
            }
            let kept = try await other.get("held/", options: .prefix(Array("held/".utf8)))
            #expect(kept.count == 4, "keys of the new history's leases went: \(kept.kvs.map(\.keyString))")
            for lease in fresh { #expect(try await other.timeToLive(lease).ttl > 0, "lease \(lease) of the new history was revoked") }
            #expect(!newSession.isDone)
            let owner = try await other.get("held-lock/", options: .prefix(Array("held-lock/".utf8)))
            #expect(owner.count == 1 && held > 0, "the new history's lock key went")
            try await newSession.close()
            print("lease IDs: lost history \(lost), new history \(fresh)")
        }
    }

    @Test func aRestoreFromAnOlderSnapshotIsAStoreResetAndNoFencingTokenRepeats() async throws {
        try await RedisServer.withServer { server in
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            let admin = try await RedisConnection.connect(server.configuration)
            defer { Task { await admin.close() } }
            _ = try await store.put("snap/a", "1")
            _ = try await admin.send([Array("SAVE".utf8)])   // the snapshot: revision 2
            // Everything from here is lost: locks taken, tokens handed out, puts.
            var lost: [Int64] = []
            for _ in 0..<5 {
                let session = try await Session(client: store, ttl: 30)
                lost.append(try await DistributedMutex(session: session, prefix: "snap-lock").lock())
                try await session.close()
            }
            for index in 0..<10 { _ = try await store.put("snap/\(index)", "lost") }
            let observers = try await Self.observe(store, prefix: "snap/")
            let seen = try await store.currentRevision()
            try await server.restart()   // SIGKILL; Redis loads the older dump.rdb
            let restarted = ContinuousClock.now
            let other = try await CoordinationClient.connect(url: server.url)
            defer { Task { await other.close() } }
            let reloaded = try await other.currentRevision()
            #expect(reloaded < seen, "Redis did not go back to the snapshot (revision \(reloaded), was \(seen))")
            try await Self.expectReset(observers, store: store, after: restarted)
            // Locks of the new history: every token above every token of the lost one,
            // from the reset client and from one that never saw the lost history.
            var fresh: [Int64] = []
            for client in [store, other, store, other] {
                let session = try await Session(client: client, ttl: 30)
                fresh.append(try await DistributedMutex(session: session, prefix: "snap-lock").lock())
                try await session.close()
            }
            let highestLost = lost.max() ?? 0
            #expect(fresh.allSatisfy { $0 > highestLost } && fresh == fresh.sorted() && Set(fresh).count == fresh.count,
                    "tokens after the restore \(fresh) do not all exceed the lost ones \(lost)")
            print("restore: revision \(seen) went back to \(reloaded); lost tokens up to \(highestLost), new tokens from \(fresh.min() ?? 0)")
        }
    }

    @Test func aKillWithAppendfsyncAlwaysUnderEightWritersLosesNoAcknowledgedPutAndEndsNothing() async throws {
        let options = RedisServer.Options(appendOnly: true, appendFsync: "always")
        try await RedisServer.withServer(options) { server in
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            let background = Task { try await store.run(interval: .milliseconds(50)) }
            defer { background.cancel() }
            let from = try await store.currentRevision() + 1
            let seen = Acknowledged()   // "last": the newest revision the live watch delivered
            let stream = store.watch("w/", options: .prefix(Array("w/".utf8), startRevision: from))
            let watched = Task { () -> ([Int64], (any Error)?) in
                var revisions: [Int64] = []
                do {
                    for try await response in stream {
                        revisions += response.events.map(\.kv.modRevision)
                        seen.values.withLock { $0["last"] = Int(revisions.last ?? 0) }
                    }
                    return (revisions, nil)
                } catch {
                    return (revisions, Task.isCancelled ? nil : error)
                }
            }
            let session = try await Session(client: store, ttl: 10)
            let mutex = DistributedMutex(session: session, prefix: "durable-lock")
            let before = try await mutex.lock()
            // 8 writers, 40 puts each; a put that fails (Redis down) is retried until
            // acknowledged, so every writer's values are acknowledged in order.
            let acknowledged = Acknowledged()
            let writers = (0..<8).map { writer in
                Task {
                    for value in 0..<40 {
                        while true {
                            do {
                                _ = try await store.put("w/\(writer)", "\(value)")
                                acknowledged.values.withLock { $0["w/\(writer)"] = value }
                                try await Task.sleep(for: .milliseconds(5))
                                break
                            } catch {
                                try await Task.sleep(for: .milliseconds(20))
                            }
                        }
                    }
                }
            }
            // Kill mid-stream: once a quarter of the puts are acknowledged, while the
            // writers keep writing (each put waits 5 ms after the one before).
            let midway = await eventually(timeout: .seconds(30)) { acknowledged.values.withLock { $0.values.reduce(0) { $0 + $1 + 1 } } >= 80 }
            #expect(midway)
            let ackedBefore = acknowledged.values.withLock { $0.values.reduce(0) { $0 + $1 + 1 } }
            let killedAt = ContinuousClock.now
            try await server.restart()   // SIGKILL mid-stream; the AOF brings everything back
            let back = ContinuousClock.now - killedAt
            for writer in writers { try await writer.value }
            // Nothing acknowledged was lost.
            for (key, value) in acknowledged.values.withLock({ $0 }) {
                #expect(try await store.get(key).kvs.first.map { String(decoding: $0.value, as: UTF8.self) } == "\(value)")
            }
            // The live watch saw exactly the store's history of w/ across the restart:
            // every put once, in revision order (a put retried after a lost reply may
            // have been applied twice; both are in the history and in the watch).
            let last = try await store.get("w/", options: .prefix(Array("w/".utf8))).kvs.map(\.modRevision).max() ?? 0
            let caughtUp = await eventually(timeout: .seconds(30)) { seen.values.withLock { $0["last"] ?? 0 } >= Int(last) }
            #expect(caughtUp, "the live watch stopped before revision \(last)")
            watched.cancel()
            let (revisions, error) = await watched.value
            #expect(error == nil, "the watch ended with \(String(describing: error))")
            var history: [Int64] = []
            for try await response in store.watch("w/", options: .prefix(Array("w/".utf8), startRevision: from)) {
                history += response.events.map(\.kv.modRevision)
                if (history.last ?? 0) >= last { break }
            }
            #expect(revisions == history, "the live watch (\(revisions.count) events) differs from the history (\(history.count) events)")
            #expect(revisions.count >= 8 * 40 && Set(revisions).count == revisions.count)
            // The session (TTL 10 s) and its lock survived; a token taken after the
            // restart is above the one from before it.
            #expect(!session.isDone, "the session ended: \(String(describing: session.endedBecause))")
            #expect(try await store.txn(Txn(compares: [mutex.isOwner])).succeeded)
            try await mutex.unlock()
            let after = try await DistributedMutex(session: session, prefix: "durable-lock").lock()
            #expect(after > before)
            try await session.close()
            #expect(ackedBefore < 8 * 40, "every put was acknowledged before the kill")
            print("kill -9 with appendfsync always: 320 puts from 8 writers (\(ackedBefore) acknowledged before the kill), 1 fault, Redis back in \(back), 0 acknowledged puts lost, \(revisions.count) watch events in order")
        }
    }
}
