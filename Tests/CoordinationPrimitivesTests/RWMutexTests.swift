import CoordinationPrimitives
import RedisClient
import Testing

/// etcd's TestRWMutexSingleNode/MultiNode (integration/v3_lock_test.go), and the
/// queueing rules one by one.
@Suite(.timeLimit(.minutes(1))) struct RWMutexTests {
    /// etcd's TestRWMutexSingleNode: five contenders on one client, readers and writers mixed.
    @Test func rwMutexReadersShareAndWritersExcludeSingleNode() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 0) { clients in
                try await contention(waiters: 5, clients: clients)
            }
        }
    }

    /// etcd's TestRWMutexMultiNode: five contenders, each on a client of its own.
    @Test func rwMutexReadersShareAndWritersExcludeMultiNode() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 5) { clients in
                try await contention(waiters: 5, clients: clients)
            }
        }
    }

    /// Every contender takes the lock three times, reading or writing in turn, and holds
    /// it briefly; a writer must never overlap anyone.
    private func contention(waiters: Int, clients: [CoordinationClient]) async throws {
        let holders = RecipeBox((readers: 0, writers: 0, violations: 0, writes: 0, reads: 0))
        try await withSessions(on: clients, count: waiters) { sessions in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, session) in sessions.enumerated() {
                    group.addTask {
                        let lock = RWMutex(session: session, prefix: "test-rwmutex")
                        for round in 0..<3 {
                            if (index + round) % 2 == 0 {
                                try await lock.rlock()
                                holders.update { h in
                                    h.readers += 1
                                    h.reads += 1
                                    if h.writers > 0 { h.violations += 1 }
                                }
                                try await Task.sleep(for: .milliseconds(20))
                                holders.update { $0.readers -= 1 }
                                try await lock.runlock()
                            } else {
                                try await lock.lock()
                                holders.update { h in
                                    h.writers += 1
                                    h.writes += 1
                                    if h.writers > 1 || h.readers > 0 { h.violations += 1 }
                                }
                                try await Task.sleep(for: .milliseconds(20))
                                holders.update { $0.writers -= 1 }
                                try await lock.unlock()
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        let result = holders.value
        #expect(result.violations == 0)
        #expect(result.reads + result.writes == waiters * 3)
    }

    @Test func rwMutexReadersShareTheLock() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 2) { sessions in
                let first = RWMutex(session: sessions[0], prefix: "rw")
                let second = RWMutex(session: sessions[1], prefix: "rw")
                try await first.rlock()
                let reading = Task { try await second.rlock() }
                #expect(await completes(reading))
                try await reading.value
                #expect(try await recipeKeys(under: "rw/", in: store).sorted()
                    == ["rw/read/" + sessions[0].leaseKeySuffix, "rw/read/" + sessions[1].leaseKeySuffix].sorted())
            }
        }
    }

    @Test func rwMutexWriterWaitsForEarlierReaders() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 3) { sessions in
                let readers = [RWMutex(session: sessions[0], prefix: "rw"), RWMutex(session: sessions[1], prefix: "rw")]
                let writer = RWMutex(session: sessions[2], prefix: "rw")
                for reader in readers { try await reader.rlock() }
                let writing = Task { try await writer.lock() }
                #expect(await stillBlocked(writing))
                try await readers[0].runlock()
                #expect(await stillBlocked(writing))
                try await readers[1].runlock()
                #expect(await completes(writing))
                try await writing.value
                #expect(try await recipeKeys(under: "rw/", in: store) == ["rw/write/" + sessions[2].leaseKeySuffix])
            }
        }
    }

    @Test func rwMutexReaderAndWriterWaitForEarlierWriter() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 3) { sessions in
                let holder = RWMutex(session: sessions[0], prefix: "rw")
                let reader = RWMutex(session: sessions[1], prefix: "rw")
                let writer = RWMutex(session: sessions[2], prefix: "rw")
                try await holder.lock()
                let reading = Task { try await reader.rlock() }
                #expect(await stillBlocked(reading))
                let writing = Task { try await writer.lock() }
                #expect(await stillBlocked(writing))
                try await holder.unlock()
                #expect(await completes(reading))
                try await reading.value
                #expect(await stillBlocked(writing))
                try await reader.runlock()
                #expect(await completes(writing))
                try await writing.value
            }
        }
    }

    /// FIFO: a reader that comes after a waiting writer waits behind it, even though
    /// only readers hold the lock, so writers are not starved.
    @Test func rwMutexLaterReaderQueuesBehindWaitingWriter() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 3) { sessions in
                let early = RWMutex(session: sessions[0], prefix: "rw")
                let writer = RWMutex(session: sessions[1], prefix: "rw")
                let late = RWMutex(session: sessions[2], prefix: "rw")
                try await early.rlock()
                let writing = Task { try await writer.lock() }
                #expect(try await eventually { try await recipeKeys(under: "rw/write/", in: store).count == 1 })
                let reading = Task { try await late.rlock() }
                #expect(await stillBlocked(reading))
                try await early.runlock()
                #expect(await completes(writing))
                try await writing.value
                #expect(await stillBlocked(reading))
                try await writer.unlock()
                #expect(await completes(reading))
                try await reading.value
            }
        }
    }

    @Test func rwMutexWaiterStopsWithSessionExpiredWhenItsSessionCloses() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let holder = RWMutex(session: sessions[0], prefix: "rw")
                try await holder.lock()
                let session = try await Session(client: store, ttl: 10)
                let reader = RWMutex(session: session, prefix: "rw")
                let reading = Task { try await reader.rlock() }
                // In line first (its key written), so that the close ends a waiter.
                #expect(await eventually(timeout: .seconds(20)) { (try? await recipeKeys(under: "rw/read/", in: store).count) == 1 })
                #expect(await stillBlocked(reading))
                try await session.close()
                #expect(await completes(reading))
                #expect(await concurrencyError { try await reading.value }?.code == .sessionExpired)
                #expect(try await recipeKeys(under: "rw/read/", in: store).isEmpty)
            }
        }
    }

    @Test func rwMutexLockOfACrashedHolderFreesWhenItsLeaseExpires() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 1) { sessions in
                let crashed = try await Session(client: store, ttl: 3)
                try await RWMutex(session: crashed, prefix: "rw").lock()
                let reading = Task { try await RWMutex(session: sessions[0], prefix: "rw").rlock() }
                #expect(await stillBlocked(reading))
                await crashed.orphan()
                #expect(await completes(reading))
                try await reading.value
            }
        }
    }

    @Test func rwMutexCancelledWaiterLeavesTheQueue() async throws {
        try await withStore { store, _ in
            try await withSessions(on: [store], count: 2) { sessions in
                try await RWMutex(session: sessions[0], prefix: "rw").lock()
                let waiting = Task { try await RWMutex(session: sessions[1], prefix: "rw").lock() }
                #expect(await stillBlocked(waiting))
                waiting.cancel()
                #expect(await completes(waiting))
                await #expect(throws: CancellationError.self) { try await waiting.value }
                #expect(try await recipeKeys(under: "rw/", in: store) == ["rw/write/" + sessions[0].leaseKeySuffix])
            }
        }
    }
}
