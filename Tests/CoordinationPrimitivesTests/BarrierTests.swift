import CoordinationPrimitives
import RedisClient
import Testing

/// etcd's integration/v3_barrier_test.go and v3_double_barrier_test.go, and more.
@Suite(.timeLimit(.minutes(1))) struct BarrierTests {
    // MARK: Barrier

    /// etcd's TestBarrierSingleNode: five waiters on one client.
    @Test func barrierBlocksWaitersUntilReleasedSingleNode() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 0) { clients in
                try await barrierScenario(waiters: 5, clients: clients, store: store)
            }
        }
    }

    /// etcd's TestBarrierMultiNode: five waiters, each on a client of its own.
    @Test func barrierBlocksWaitersUntilReleasedMultiNode() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 5) { clients in
                try await barrierScenario(waiters: 5, clients: clients, store: store)
            }
        }
    }

    private func barrierScenario(waiters: Int, clients: [CoordinationClient], store: CoordinationClient) async throws {
        let barrier = Barrier(client: store, key: "test-barrier")
        try await barrier.hold()
        #expect(await concurrencyError { try await barrier.hold() }?.code == .keyExists)

        let released = RecipeBox(0)
        var tasks: [Task<Void, any Error>] = []
        for index in 0..<waiters {
            let waiter = Barrier(client: clients[index % clients.count], key: "test-barrier")
            tasks.append(Task {
                try await waiter.wait()
                released.update { $0 += 1 }
            })
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(released.value == 0, "barrier did not wait")

        try await barrier.release()
        for task in tasks { #expect(await completes(task)) }
        for task in tasks { try await task.value }
        #expect(released.value == waiters)
    }

    @Test func barrierHoldFailsWhileHeldAndSucceedsAfterRelease() async throws {
        try await withStore { store, _ in
            let barrier = Barrier(client: store, key: "b")
            try await barrier.hold()
            let error = await concurrencyError { try await Barrier(client: store, key: "b").hold() }
            #expect(error?.code == .keyExists)
            try await barrier.release()
            try await barrier.hold()
            #expect(try await recipeKeys(under: "b", in: store) == ["b"])
        }
    }

    @Test func barrierWaitReturnsAtOnceWhenNotHeld() async throws {
        try await withStore { store, _ in
            let barrier = Barrier(client: store, key: "b")
            try await barrier.wait()
            try await barrier.hold()
            try await barrier.release()
            try await barrier.wait()
        }
    }

    @Test func barrierWaitIsCancellable() async throws {
        try await withStore { store, _ in
            let barrier = Barrier(client: store, key: "b")
            try await barrier.hold()
            let waiter = Task { try await barrier.wait() }
            #expect(await stillBlocked(waiter))
            waiter.cancel()
            #expect(await completes(waiter))
            await #expect(throws: CancellationError.self) { try await waiter.value }
        }
    }

    // MARK: DoubleBarrier

    /// etcd's TestDoubleBarrier: ten participants (each with its own session, on three
    /// clients); nobody enters before the last arrives, nobody leaves before the last leaves.
    @Test func doubleBarrierEnterWaitsForCountAndLeaveWaitsForAll() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 3) { clients in
                try await withSessions(on: clients, count: 10) { sessions in
                    let waiters = sessions.count
                    let last = try DoubleBarrier(session: sessions[0], key: "test-barrier", count: waiters)
                    let entered = RecipeBox(0)
                    let left = RecipeBox(0)
                    var tasks: [Task<Void, any Error>] = []
                    for session in sessions.dropFirst() {
                        let barrier = try DoubleBarrier(session: session, key: "test-barrier", count: waiters)
                        tasks.append(Task {
                            try await barrier.enter()
                            entered.update { $0 += 1 }
                            try await barrier.leave()
                            left.update { $0 += 1 }
                        })
                    }
                    #expect(try await eventually {
                        try await store.get("test-barrier/waiters/", options: .prefix(Array("test-barrier/waiters/".utf8))).count == Int64(waiters - 1)
                    })
                    try await Task.sleep(for: .milliseconds(200))
                    #expect(entered.value == 0, "barrier did not enter-wait")

                    try await last.enter()
                    #expect(await eventually { entered.value == waiters - 1 })
                    try await Task.sleep(for: .milliseconds(300))
                    #expect(left.value == 0, "barrier did not leave-wait")

                    try await last.leave()
                    for task in tasks { #expect(await completes(task)) }
                    for task in tasks { try await task.value }
                    #expect(left.value == waiters - 1)
                    #expect(try await recipeKeys(under: "test-barrier/", in: store).isEmpty)
                }
            }
        }
    }

    /// etcd's TestDoubleBarrierFailover: one participant enters and never leaves; the
    /// others' leave returns once its session is closed.
    @Test func doubleBarrierLeaveGoesOnWhenAParticipantsSessionCloses() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 3) { clients in
                try await withSessions(on: clients, count: 10) { sessions in
                    try await failover(sessions: sessions, store: store) {
                        try await sessions[0].close()
                    }
                }
            }
        }
    }

    /// The failover again, but the sacrificial participant's lease expires (its process
    /// stopped refreshing it) instead of being revoked.
    @Test func doubleBarrierLeaveGoesOnWhenAParticipantsSessionExpires() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 3) { clients in
                let sacrificial = try await Session(client: clients[0], ttl: 3)
                try await withSessions(on: clients, count: 9) { sessions in
                    try await failover(sessions: [sacrificial] + sessions, store: store) {
                        await sacrificial.orphan()
                    }
                }
            }
        }
    }

    private func failover(sessions: [Session], store: CoordinationClient, endFirstSession: () async throws -> Void) async throws {
        let waiters = sessions.count
        let entered = RecipeBox(0)
        let left = RecipeBox(0)
        let sacrificial = try DoubleBarrier(session: sessions[0], key: "test-barrier", count: waiters)
        let enteredSacrificial = Task { try await sacrificial.enter() }
        var tasks: [Task<Void, any Error>] = []
        for session in sessions.dropFirst() {
            let barrier = try DoubleBarrier(session: session, key: "test-barrier", count: waiters)
            tasks.append(Task {
                try await barrier.enter()
                entered.update { $0 += 1 }
                try await barrier.leave()
                left.update { $0 += 1 }
            })
        }
        #expect(await completes(enteredSacrificial))
        try await enteredSacrificial.value
        #expect(await eventually { entered.value == waiters - 1 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(left.value == 0, "leave did not wait for the participant that never left")

        try await endFirstSession()
        for task in tasks { #expect(await completes(task)) }
        for task in tasks { try await task.value }
        #expect(left.value == waiters - 1)
        #expect(try await recipeKeys(under: "test-barrier/waiters/", in: store).isEmpty)
    }

    @Test func doubleBarrierEnterFailsWithTooManyParticipants() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 3) { sessions in
                let first = try DoubleBarrier(session: sessions[0], key: "db", count: 2)
                let second = try DoubleBarrier(session: sessions[1], key: "db", count: 2)
                let third = try DoubleBarrier(session: sessions[2], key: "db", count: 2)
                let entering = Task { try await first.enter() }
                #expect(await stillBlocked(entering))
                try await second.enter()
                #expect(await completes(entering))
                try await entering.value
                #expect(await concurrencyError { try await third.enter() }?.code == .tooManyParticipants)
                #expect(try await recipeKeys(under: "db/waiters/", in: store).sorted()
                    == [first.participantKey, second.participantKey].map { String(decoding: $0, as: UTF8.self) }.sorted())
            }
        }
    }

    @Test func doubleBarrierKeysFollowEtcdLayout() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let barrier = try DoubleBarrier(session: sessions[0], key: "db", count: 1)
                try await barrier.enter()
                let participant = try #require(try await store.get(barrier.participantKey).kvs.first)
                #expect(participant.keyString == "db/waiters/" + sessions[0].leaseKeySuffix)
                #expect(participant.lease == sessions[0].lease)
                #expect(try await recipeKeys(under: "db/", in: store) == ["db/ready", participant.keyString])
                try await barrier.leave()
                #expect(try await recipeKeys(under: "db/", in: store).isEmpty)
            }
        }
    }

    @Test func doubleBarrierEnterStopsWithSessionExpiredWhenTheSessionCloses() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 10)
            let barrier = try DoubleBarrier(session: session, key: "db", count: 2)
            let entering = Task { try await barrier.enter() }
            // In line first (its key written), so that the close ends a waiter.
            #expect(await eventually(timeout: .seconds(20)) { (try? await recipeKeys(under: "db/", in: store).count) == 1 })
            #expect(await stillBlocked(entering))
            try await session.close()
            #expect(await completes(entering))
            #expect(await concurrencyError { try await entering.value }?.code == .sessionExpired)
        }
    }

    @Test func doubleBarrierRejectsACountBelowOne() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                #expect(await concurrencyError { _ = try DoubleBarrier(session: sessions[0], key: "db", count: 0) }?.code == .invalidArgument)
            }
        }
    }
}
