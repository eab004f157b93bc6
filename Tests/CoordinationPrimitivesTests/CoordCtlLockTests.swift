import CoordinationPrimitives
import Foundation
import Testing

/// coordctl's lock and elect commands, run as the built executable.
@Suite struct CoordCtlLockTests {
    @Test func lockRunsTheCommandHoldingTheLockWithTheFencingTokenAndPassesItsExitStatus() async throws {
        try await withStore { store, server in
            let child = try Worker(["lock", "jobs", "--", "sh", "-c", "echo $COORD_LOCK_KEY $COORD_LOCK_REV $COORD_FENCING_TOKEN; exit 7"],
                                   executable: "coordctl", environment: ["REDIS_URL": server.url])
            let line = try #require(await child.readLine())
            #expect(await child.wait() == 7)
            let fields = line.split(separator: " ")
            #expect(fields.count == 3 && fields[0].hasPrefix("jobs/"), "\(line)")
            let revision = try #require(Int64(fields[1]))
            let token = try #require(Int64(fields[2]))
            // The key was created at COORD_LOCK_REV, the token is that revision in the
            // store's epoch, and the key is gone after the command.
            let history = try await store.get(String(fields[0]), options: RangeOptions(revision: revision))
            #expect(history.kvs.first?.createRevision == revision)
            #expect(try await store.fencingToken(forCreateRevision: revision) == token)
            #expect(try await store.get("jobs/", options: .prefix(Array("jobs/".utf8))).count == 0)
        }
    }

    @Test func lockWaitsForTheCurrentHolder() async throws {
        try await withStore { store, server in
            let holder = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "jobs")
            let token = try await holder.lock()
            let child = try Worker(["lock", "jobs", "sh", "-c", "echo $COORD_FENCING_TOKEN"], executable: "coordctl", environment: ["REDIS_URL": server.url])
            #expect(await eventually(timeout: .seconds(30)) { (try? await store.get("jobs/", options: .prefix(Array("jobs/".utf8))).count) == 2 })
            #expect(child.isRunning)
            try await holder.unlock()
            let printed = await child.readLine()
            #expect(await child.wait() == 0)
            #expect(Int64(printed ?? "") ?? 0 > token)
        }
    }

    @Test func lockWithoutACommandPrintsTheKeyAndReleasesOnInterrupt() async throws {
        try await withStore { store, server in
            let child = try Worker(["lock", "--ttl", "5", "jobs"], executable: "coordctl", environment: ["REDIS_URL": server.url])
            let key = try #require(await child.readLine())
            #expect(try await store.get(key).count == 1)
            child.signal(SIGINT)
            #expect(await child.wait() == 0)
            #expect(try await store.get(key).count == 0, "the lock was not released on SIGINT")
        }
    }

    @Test func lockInterruptedWhileWaitingLeavesTheQueue() async throws {
        try await withStore { store, server in
            let holder = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "jobs")
            try await holder.lock()
            let child = try Worker(["lock", "jobs", "--", "true"], executable: "coordctl", environment: ["REDIS_URL": server.url])
            #expect(await eventually(timeout: .seconds(30)) { (try? await store.get("jobs/", options: .prefix(Array("jobs/".utf8))).count) == 2 })
            child.signal(SIGTERM)
            _ = await child.wait()
            #expect(try await store.get("jobs/", options: .prefix(Array("jobs/".utf8))).count == 1, "the interrupted waiter's key stayed queued")
        }
    }

    @Test func lockInterruptedWhileTheCommandRunsTerminatesTheCommandAndReleases() async throws {
        try await withStore { store, server in
            let child = try Worker(["lock", "jobs", "--", "sh", "-c", "echo started; sleep 30"], executable: "coordctl", environment: ["REDIS_URL": server.url])
            #expect(await child.readLine() == "started")
            child.signal(SIGTERM)
            #expect(await child.wait() == 130)
            #expect(try await store.get("jobs/", options: .prefix(Array("jobs/".utf8))).count == 0)
        }
    }

    @Test func electCampaignsAndListenersSeeTheLeader() async throws {
        try await withStore { store, server in
            let environment = ["REDIS_URL": server.url]
            let listener = try Worker(["elect", "-l", "scheduler"], executable: "coordctl", environment: environment)
            let candidate = try Worker(["elect", "scheduler", "node-1"], executable: "coordctl", environment: environment)
            let key = try #require(await candidate.readLine())
            #expect(key.hasPrefix("scheduler/"))
            #expect(await candidate.readLine() == "node-1")
            #expect(await listener.readLine() == key)
            #expect(await listener.readLine() == "node-1")
            let second = try Worker(["elect", "scheduler", "node-2"], executable: "coordctl", environment: environment)
            #expect(await eventually(timeout: .seconds(30)) { (try? await store.get("scheduler/", options: .prefix(Array("scheduler/".utf8))).count) == 2 })
            candidate.signal(SIGTERM)   // resigns
            #expect(await candidate.wait() == 0)
            _ = await second.readLine()
            #expect(await second.readLine() == "node-2")
            _ = await listener.readLine()
            #expect(await listener.readLine() == "node-2")
            second.signal(SIGTERM)
            listener.signal(SIGTERM)
            #expect(await second.wait() == 0)
            #expect(await listener.wait() == 0)
        }
    }

    @Test func electWithoutAProposalOrListenExplainsWhatToGive() async throws {
        try await withStore { _, server in
            let child = try Worker(["elect", "scheduler"], executable: "coordctl", environment: ["REDIS_URL": server.url])
            #expect(await child.wait() != 0)
        }
    }
}
