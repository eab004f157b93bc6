import Foundation
import CoordinationPrimitives
import Testing

@Suite struct SessionTests {
    @Test func aSessionKeepsItsLeaseAlivePastTheTTL() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 3)
            _ = try await store.put("k", "v", options: PutOptions(lease: session.lease))
            try await Task.sleep(for: .milliseconds(7_500))   // 2.5 TTLs
            #expect(try await store.get("k").count == 1)
            #expect(!session.isDone)
            try await session.close()
        }
    }

    @Test func aSessionStaysAliveInAProcessWhosePoolIsBlockedAndClientSaturated() async throws {
        try await withStore { store, server in
            // A process of its own, so that blocking its cooperative pool does not stall
            // the tests running beside this one.
            let worker = try Worker(["busy", server.url, "busy", "3", "10"])
            let started = try #require(await worker.readLine())
            #expect(started.hasPrefix("session "))
            let lease = try #require(Int64(started.dropFirst("session ".count), radix: 16))
            // Watched from outside, the lease and its key live on for 3 TTLs and more.
            let deadline = ContinuousClock.now + .seconds(8)
            var checks = 0
            while ContinuousClock.now < deadline {
                #expect(try await store.get("busy/held").count == 1, "the busy process's lease expired")
                checks += 1
                try await Task.sleep(for: .milliseconds(200))
            }
            let report = try #require(await worker.readLine())
            #expect(report.hasPrefix("alive puts "), "\(report)")
            #expect((Int(report.split(separator: " ").last ?? "") ?? 0) > 0, "\(report)")
            #expect(await worker.wait() == 0)
            #expect(checks > 0)
            #expect(try await store.timeToLive(lease).ttl == -1)   // closed at the end
        }
    }

    @Test func aSessionWithAnActivityLivesWhileItsOwnerShowsSignsOfLifeAndExpiresATTLAfterTheLast() async throws {
        try await withStore { store, _ in
            let activity = LeaseActivity()
            let session = try await Session(client: store, ttl: 6, activity: activity)
            _ = try await store.put("k", "v", options: PutOptions(lease: session.lease))
            // Signs of life every 500 ms for 2 TTLs keep it. They come from a thread of
            // their own: a task's sleeps on a test run's busy pool can overrun by seconds,
            // and a gap of a TTL between signs rightly lets the lease go.
            let last = await withCheckedContinuation { (continuation: CheckedContinuation<ContinuousClock.Instant, Never>) in
                let thread = Thread {
                    var last = ContinuousClock.now
                    for _ in 0..<24 {
                        usleep(500_000)
                        last = .now
                        activity.note()
                    }
                    continuation.resume(returning: last)
                }
                thread.start()
            }
            #expect(try await store.get("k").count == 1)
            #expect(!session.isDone)
            // Then none: a refresh follows the last sign of life, so the lease lives at
            // least a TTL past it (measured from just before it), and then it goes. (A
            // get that returns a TTL or more after the last sign proves nothing either way.)
            try await Task.sleep(for: .milliseconds(2_000))
            let count = try await store.get("k").count
            if ContinuousClock.now - last < .seconds(6) {
                #expect(count == 1, "the lease expired less than a TTL after the last sign of life")
            }
            let gone = await eventually(timeout: .seconds(40)) { (try? await store.get("k").count) == 0 }
            #expect(gone, "the lease outlived its owner's activity")
            #expect(ContinuousClock.now - last >= .seconds(6))
            let ended = await eventually(timeout: .seconds(10)) { session.isDone }
            #expect(ended && session.isExpired)
        }
    }

    @Test func aBusyActivityKeepsItsSessionAliveWithoutSignsOfLife() async throws {
        try await withStore { store, _ in
            let activity = LeaseActivity()
            let session = try await Session(client: store, ttl: 3, activity: activity)
            _ = try await store.put("k", "v", options: PutOptions(lease: session.lease))
            activity.setBusy(true)
            try await Task.sleep(for: .milliseconds(7_500))   // busy: the keeper thread refreshes on its own
            #expect(try await store.get("k").count == 1, "a busy owner lost its lease")
            activity.setBusy(false)
            let gone = await eventually(timeout: .seconds(20)) { (try? await store.get("k").count) == 0 }
            #expect(gone, "the lease outlived its owner's activity")
        }
    }

    @Test func closeRevokesTheLeaseAndItsKeys() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 60)
            _ = try await store.put("k", "v", options: PutOptions(lease: session.lease))
            try await session.close()
            #expect(session.isDone)
            #expect(session.endedBecause == .closed)
            #expect(try await store.get("k").count == 0)
            #expect(try await store.timeToLive(session.lease).ttl == -1)
        }
    }

    @Test func doneReturnsWhenTheLeaseIsRevokedElsewhere() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 3)
            _ = try await store.revokeLease(session.lease)
            // The next refresh (every TTL/3 = 1 s) finds the lease gone.
            let ended = await eventually(timeout: .seconds(15)) { session.isDone }
            #expect(ended)
            #expect(session.isExpired)
            await session.done()
        }
    }

    @Test func orphanStopsRefreshingSoTheLeaseExpires() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 5)
            _ = try await store.put("k", "v", options: PutOptions(lease: session.lease))
            await session.orphan()
            #expect(session.endedBecause == .orphaned)
            #expect(try await store.get("k").count == 1, "orphan must not revoke")
            let gone = await eventually(timeout: .seconds(20)) { (try? await store.get("k").count) == 0 }
            #expect(gone)
        }
    }

    @Test func closeAfterOrphanStillRevokesTheLease() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 30)
            _ = try await store.put("k", "v", options: PutOptions(lease: session.lease))
            await session.orphan()
            try await session.close()
            #expect(try await store.get("k").count == 0)
            #expect(try await store.timeToLive(session.lease).ttl == -1)
        }
    }

    @Test func aSessionDroppedWithoutCloseStopsRefreshingItsLease() async throws {
        try await withStore { store, _ in
            var session: Session? = try await Session(client: store, ttl: 3)
            let lease = session!.lease
            _ = try await store.put("k", "v", options: PutOptions(lease: lease))
            session = nil
            #expect(session == nil)
            let expired = await eventually(timeout: .seconds(15)) { (try? await store.timeToLive(lease).ttl) == -1 }
            #expect(expired, "a dropped session kept its lease alive")
        }
    }

    @Test func aSessionCanAdoptALiveLease() async throws {
        try await withStore { store, _ in
            let first = try await Session(client: store, ttl: 5)
            await first.orphan()
            let adopted = try await Session(client: store, lease: first.lease)
            #expect(adopted.lease == first.lease)
            #expect(adopted.ttl == 5)
            try await adopted.close()
            #expect(try await store.timeToLive(first.lease).ttl == -1)
        }
    }

    @Test func adoptingAnUnknownLeaseFails() async throws {
        try await withStore { store, _ in
            do {
                _ = try await Session(client: store, lease: 0x7777)
                Issue.record("adopting an unknown lease succeeded")
            } catch let error as CoordinationError {
                #expect(error.code == .leaseNotFound)
            }
        }
    }

    @Test func sessionKeysAreNamedAfterTheLeaseInHex() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, lease: try await store.grantLease(ttl: 10, id: 0xabc).id)
            #expect(session.leaseKeySuffix == "abc")
            let mutex = DistributedMutex(session: session, prefix: "locks/m")
            try await mutex.lock()
            #expect(mutex.key == Array("locks/m/abc".utf8))
            try await session.close()
        }
    }
}
