import CoordinationPrimitives
import RedisClient
import Testing

@Suite(.timeLimit(.minutes(1))) struct SemaphoreTests {
    /// Six contenders, each with its own session on one of three clients, take one of
    /// two permits three times each: never more than two holders, but two at times.
    @Test func semaphoreNeverAdmitsMoreHoldersThanPermits() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 3) { clients in
                try await withSessions(on: clients, count: 6) { sessions in
                    let inside = RecipeOccupancy()
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for session in sessions {
                            group.addTask {
                                let semaphore = try Semaphore(session: session, prefix: "sem", permits: 2)
                                for _ in 0..<3 {
                                    try await semaphore.acquire()
                                    inside.enter()
                                    try await Task.sleep(for: .milliseconds(30))
                                    inside.leave()
                                    try await semaphore.release()
                                }
                            }
                        }
                        try await group.waitForAll()
                    }
                    #expect(inside.visits == 18)
                    #expect(inside.most == 2)
                    #expect(try await recipeKeys(under: "sem/", in: store).isEmpty)
                }
            }
        }
    }

    /// Waiters get their permits in the order they arrived.
    @Test func semaphoreGrantsPermitsInArrivalOrder() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 2) { sessions in
                let holders = try sessions.map { try Semaphore(session: $0, prefix: "sem", permits: 2) }
                for holder in holders { try await holder.acquire() }
                let order = RecipeBox<[Int]>([])
                var waiters: [Task<Void, any Error>] = []
                for index in 0..<4 {
                    let semaphore = try Semaphore(session: sessions[index % 2], prefix: "sem", permits: 2)
                    waiters.append(Task {
                        try await semaphore.acquire()
                        order.update { $0.append(index) }
                        try await Task.sleep(for: .milliseconds(50))
                        try await semaphore.release()
                    })
                    // Queue them one after another.
                    #expect(try await eventually { try await recipeKeys(under: "sem/", in: store).count == 3 + index })
                }
                #expect(await stillBlocked(waiters[0]))
                try await holders[0].release()
                for waiter in waiters { #expect(await completes(waiter)) }
                for waiter in waiters { try await waiter.value }
                #expect(order.value == [0, 1, 2, 3])
            }
        }
    }

    /// With two permits, the newer holder releasing first must wake the waiter: a waiter
    /// that watched only the key two places ahead (the older holder) would sleep through it.
    @Test func semaphoreWaiterWakesWhenAnyHolderReleases() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 3) { sessions in
                let older = try Semaphore(session: sessions[0], prefix: "sem", permits: 2)
                let newer = try Semaphore(session: sessions[1], prefix: "sem", permits: 2)
                let waiter = try Semaphore(session: sessions[2], prefix: "sem", permits: 2)
                try await older.acquire()
                try await newer.acquire()
                let waiting = Task { try await waiter.acquire() }
                #expect(await stillBlocked(waiting))
                try await newer.release()
                #expect(await completes(waiting))
                try await waiting.value
                #expect(older.isHolding && waiter.isHolding)
            }
        }
    }

    /// A waiter behind a longer line is woken by a release in its window, and keeps
    /// waiting while releases outside it leave it `permits` places back.
    @Test func semaphoreWaiterBehindALongLineWaitsForItsTurn() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let session = sessions[0]
                var line: [Semaphore] = []
                for _ in 0..<2 {
                    let holder = try Semaphore(session: session, prefix: "sem", permits: 2)
                    try await holder.acquire()
                    line.append(holder)
                }
                var waiting: [Task<Void, any Error>] = []
                for index in 0..<2 {
                    let waiter = try Semaphore(session: session, prefix: "sem", permits: 2)
                    line.append(waiter)
                    waiting.append(Task { try await waiter.acquire() })
                    #expect(try await eventually { try await recipeKeys(under: "sem/", in: store).count == 3 + index })
                }
                let last = try Semaphore(session: session, prefix: "sem", permits: 2)
                let lastWaiting = Task { try await last.acquire() }
                #expect(try await eventually { try await recipeKeys(under: "sem/", in: store).count == 5 })
                // Line: holders 0, 1; waiters 2, 3; last. Waiters 2 and 3 leave (cancelled): the
                // last is now third in line, behind the two holders.
                for task in waiting { task.cancel() }
                for task in waiting { _ = await task.result }
                #expect(await stillBlocked(lastWaiting))
                try await line[1].release()
                #expect(await completes(lastWaiting))
                try await lastWaiting.value
                #expect(line[0].isHolding && last.isHolding)
            }
        }
    }

    @Test func semaphorePermitOfAClosedSessionIsFreed() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let holderSession = try await Session(client: store, ttl: 10)
                try await Semaphore(session: holderSession, prefix: "sem", permits: 1).acquire()
                let waiter = try Semaphore(session: sessions[0], prefix: "sem", permits: 1)
                let waiting = Task { try await waiter.acquire() }
                #expect(await stillBlocked(waiting))
                try await holderSession.close()
                #expect(await completes(waiting))
                try await waiting.value
            }
        }
    }

    /// A holder whose process stops refreshing its lease (crashed, stalled) loses its
    /// permit when the lease expires.
    @Test func semaphorePermitOfAnExpiredSessionIsFreed() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 1) { clients in
                try await withSessions(on: [store], count: 1) { sessions in
                    let crashed = try await Session(client: clients[0], ttl: 3)
                    try await Semaphore(session: crashed, prefix: "sem", permits: 1).acquire()
                    let waiter = try Semaphore(session: sessions[0], prefix: "sem", permits: 1)
                    let waiting = Task { try await waiter.acquire() }
                    #expect(await stillBlocked(waiting))
                    await crashed.orphan()
                    #expect(await completes(waiting))
                    try await waiting.value
                    #expect(waiter.isHolding)
                }
            }
        }
    }

    @Test func semaphoreTryAcquireFailsWhenNoPermitIsFree() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 2) { sessions in
                let holder = try Semaphore(session: sessions[0], prefix: "sem", permits: 1)
                let other = try Semaphore(session: sessions[1], prefix: "sem", permits: 1)
                try await holder.tryAcquire()
                #expect(await concurrencyError { try await other.tryAcquire() }?.code == .locked)
                #expect(!other.isHolding)
                #expect(try await recipeKeys(under: "sem/", in: store) == [String(decoding: holder.key, as: UTF8.self)])
                try await holder.release()
                try await other.tryAcquire()
                #expect(other.isHolding)
            }
        }
    }

    @Test func semaphoreWaiterStopsWithSessionExpiredWhenItsSessionCloses() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                try await Semaphore(session: sessions[0], prefix: "sem", permits: 1).acquire()
                let session = try await Session(client: store, ttl: 10)
                let waiter = try Semaphore(session: session, prefix: "sem", permits: 1)
                let waiting = Task { try await waiter.acquire() }
                // In line first (its ticket written), so that the close ends a waiter.
                #expect(await eventually(timeout: .seconds(20)) { (try? await recipeKeys(under: "sem/", in: store).count) == 2 })
                #expect(await stillBlocked(waiting))
                try await session.close()
                #expect(await completes(waiting))
                #expect(await concurrencyError { try await waiting.value }?.code == .sessionExpired)
                #expect(!waiter.isHolding)
            }
        }
    }

    @Test func semaphoreCancelledWaiterLeavesTheLine() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let holder = try Semaphore(session: sessions[0], prefix: "sem", permits: 1)
                try await holder.acquire()
                let waiting = Task { try await Semaphore(session: sessions[0], prefix: "sem", permits: 1).acquire() }
                #expect(await stillBlocked(waiting))
                waiting.cancel()
                #expect(await completes(waiting))
                await #expect(throws: CancellationError.self) { try await waiting.value }
                #expect(try await recipeKeys(under: "sem/", in: store) == [String(decoding: holder.key, as: UTF8.self)])
            }
        }
    }

    @Test func semaphoreKeysAreSequentialAndLeased() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let first = try Semaphore(session: sessions[0], prefix: "sem", permits: 3)
                let second = try Semaphore(session: sessions[0], prefix: "sem", permits: 3)
                try await first.acquire()
                try await second.acquire()
                let kvs = try await store.get("sem/", options: .prefix(Array("sem/".utf8))).kvs
                #expect(kvs.map(\.keyString) == ["sem/0000000000000000", "sem/0000000000000001"])
                #expect(kvs.allSatisfy { $0.lease == sessions[0].lease && $0.valueString == sessions[0].leaseKeySuffix })
                // Numbering goes on from the newest ticket, not from the count.
                try await first.release()
                try await first.acquire()
                #expect(String(decoding: first.key, as: UTF8.self) == "sem/0000000000000002")
            }
        }
    }

    @Test func semaphoreRejectsFewerThanOnePermit() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                #expect(await concurrencyError { _ = try Semaphore(session: sessions[0], prefix: "sem", permits: 0) }?.code == .invalidArgument)
            }
        }
    }
}
