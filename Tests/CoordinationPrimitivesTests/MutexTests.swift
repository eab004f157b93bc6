import CoordinationPrimitives
import Synchronization
import Testing

@Suite struct MutexTests {
    /// etcd's testMutex: waiters get the lock one at a time, in turn.
    @Test(arguments: [false, true]) func waitersTakeTheLockOneAtATime(separateClients: Bool) async throws {
        try await withStore { store, server in
            let waiters = 5
            var clients: [CoordinationClient] = []
            for _ in 0..<waiters { clients.append(separateClients ? try await connectClient(server) : store) }
            let holders = Locked(0)
            let maxHolders = Locked(0)
            let acquired = Locked(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in clients {
                    group.addTask {
                        let session = try await Session(client: client, ttl: 10)
                        let mutex = DistributedMutex(session: session, prefix: "test-mutex")
                        try await mutex.lock()
                        let now = holders.withLock { $0 += 1; return $0 }
                        maxHolders.withLock { $0 = max($0, now) }
                        try await Task.sleep(for: .milliseconds(30))
                        holders.withLock { $0 -= 1 }
                        acquired.withLock { $0 += 1 }
                        try await mutex.unlock()
                        try await session.close()
                    }
                }
                try await group.waitForAll()
            }
            #expect(acquired.withLock { $0 } == waiters)
            #expect(maxHolders.withLock { $0 } == 1)
            if separateClients { for client in clients { await client.close() } }
        }
    }

    @Test func relockingWithTheSameSessionSucceedsAtOnce() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 10)
            let first = DistributedMutex(session: session, prefix: "test-mutex")
            let token = try await first.lock()
            let second = DistributedMutex(session: session, prefix: "test-mutex")
            #expect(try await second.lock() == token)
            try await session.close()
        }
    }

    @Test func locksAreGrantedInArrivalOrder() async throws {
        try await withStore { store, _ in
            let holder = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "fifo")
            try await holder.lock()
            let order = Locked<[Int]>([])
            var tasks: [Task<Void, any Error>] = []
            for index in 0..<4 {
                let mutex = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "fifo")
                tasks.append(Task {
                    try await mutex.lock()
                    order.withLock { $0.append(index) }
                    try await mutex.unlock()
                })
                // Each waiter's key exists before the next one starts.
                #expect(await eventually { (try? await store.get("fifo/", options: .prefix(Array("fifo/".utf8))).count) == Int64(index + 2) })
            }
            try await holder.unlock()
            for task in tasks { try await task.value }
            #expect(order.withLock { $0 } == [0, 1, 2, 3])
        }
    }

    @Test func fencingTokensIncreaseStrictlyAcrossHolders() async throws {
        try await withStore { store, _ in
            var last: Int64 = 0
            for _ in 0..<5 {
                let session = try await Session(client: store, ttl: 10)
                let mutex = DistributedMutex(session: session, prefix: "fence")
                let token = try await mutex.lock()
                #expect(token > last)
                #expect(mutex.fencingToken == token)
                let created = try #require(try await store.get(mutex.key).kvs.first?.createRevision)
                #expect(mutex.createRevision == created)
                #expect(try await store.fencingToken(forCreateRevision: created) == token)
                last = token
                try await mutex.unlock()
                #expect(mutex.fencingToken == nil)
                try await session.close()
            }
        }
    }

    @Test func tryLockFailsWithLockedWhileAnotherSessionHoldsIt() async throws {
        try await withStore { store, _ in
            let holder = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "try")
            try await holder.lock()
            let other = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "try")
            let error = await concurrencyError { try await other.tryLock() }
            #expect(error?.code == .locked)
            // The failed attempt leaves no waiter key behind.
            #expect(try await store.get("try/", options: .prefix(Array("try/".utf8))).count == 1)
            try await holder.unlock()
            try await other.tryLock()
            #expect(other.fencingToken != nil)
        }
    }

    @Test func isOwnerGuardsATransaction() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 10)
            let mutex = DistributedMutex(session: session, prefix: "owner")
            try await mutex.lock()
            let write = Txn(compares: [mutex.isOwner], success: [.put(key: Array("guarded".utf8), value: Array("1".utf8), options: PutOptions())])
            #expect(try await store.txn(write).succeeded)
            let stale = mutex.isOwner
            try await mutex.unlock()
            let other = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "owner")
            try await other.lock()
            #expect(try await !store.txn(Txn(compares: [stale], success: write.success)).succeeded)
            #expect(try await !store.txn(Txn(compares: [mutex.isOwner], success: write.success)).succeeded)
        }
    }

    /// etcd's TestMutexWaitsOnCurrentHolder, with this library's stronger rule: a
    /// waiter whose session ends stops at once, and the next waiter still waits for
    /// the actual holder.
    @Test func aWaiterWhoseSessionEndsStopsAtOnceAndTheNextStillWaitsForTheHolder() async throws {
        try await withStore { store, _ in
            let owner = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "test-mutex")
            try await owner.lock()
            let victimSession = try await Session(client: store, ttl: 10)
            let victim = Task { try await DistributedMutex(session: victimSession, prefix: "test-mutex").lock() }
            #expect(await eventually { (try? await store.get("test-mutex/", options: .prefix(Array("test-mutex/".utf8))).count) == 2 })
            let next = Task { try await DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "test-mutex").lock() }
            #expect(await eventually { (try? await store.get("test-mutex/", options: .prefix(Array("test-mutex/".utf8))).count) == 3 })
            try await victimSession.close()
            let victimError = await concurrencyError { _ = try await victim.value }
            #expect(victimError?.code == .sessionExpired)
            #expect(await stillBlocked(next), "the next waiter took the lock while the first owner held it")
            try await owner.unlock()
            _ = try await next.value
        }
    }

    @Test func aWaiterStopsWithSessionExpiredWhenItsKeyIsDeleted() async throws {
        try await withStore { store, _ in
            let owner = DistributedMutex(session: try await Session(client: store, ttl: 60), prefix: "m")
            try await owner.lock()
            let waiterSession = try await Session(client: store, ttl: 60)
            let waiter = DistributedMutex(session: waiterSession, prefix: "m")
            let task = Task { try await waiter.lock() }
            let key = Array("m/\(waiterSession.leaseKeySuffix)".utf8)
            #expect(await eventually { (try? await store.get(key).count) == 1 })
            _ = try await store.delete(key)
            // The owner holds on and the waiter's lease is fine: only watching its own
            // key can stop the waiter (else it would wait for the owner forever).
            let error = await concurrencyError { _ = try await within { try await task.value } }
            #expect(error?.code == .sessionExpired)
            #expect(!waiterSession.isDone)
        }
    }

    @Test func aWaiterWhoseKeyGoesInTheSameRequestAsTheHoldersDoesNotTakeTheLock() async throws {
        try await withStore { store, _ in
            let owner = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "m")
            try await owner.lock()
            let waiterSession = try await Session(client: store, ttl: 10)
            let task = Task { try await DistributedMutex(session: waiterSession, prefix: "m").lock() }
            #expect(await eventually { (try? await store.get("m/", options: .prefix(Array("m/".utf8))).count) == 2 })
            // One delete removes the holder's and the waiter's keys at one revision.
            _ = try await store.delete(Array("m/".utf8), rangeEnd: RangeOptions.prefixEnd(Array("m/".utf8)))
            let error = await concurrencyError { _ = try await task.value }
            #expect(error?.code == .sessionExpired)
        }
    }

    @Test func cancellingAWaiterRemovesItsKey() async throws {
        try await withStore { store, _ in
            let owner = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "m")
            try await owner.lock()
            let waiterSession = try await Session(client: store, ttl: 10)
            let task = Task { try await DistributedMutex(session: waiterSession, prefix: "m").lock() }
            let key = Array("m/\(waiterSession.leaseKeySuffix)".utf8)
            #expect(await eventually { (try? await store.get(key).count) == 1 })
            task.cancel()
            let result = await task.result
            #expect(throws: CancellationError.self) { try result.get() }
            #expect(try await store.get(key).count == 0)
            #expect(!waiterSession.isDone, "cancelling a waiter must not end its session")
        }
    }

    @Test func aHolderWhoseSessionExpiresReleasesTheLock() async throws {
        try await withStore { store, _ in
            let holderSession = try await Session(client: store, ttl: 3)
            try await DistributedMutex(session: holderSession, prefix: "m").lock()
            await holderSession.orphan()   // as if the process hung
            let next = DistributedMutex(session: try await Session(client: store, ttl: 60), prefix: "m")
            // The holder's 3 s lease runs out and takes its key along: the next one gets in.
            try await within { try await next.lock() }
            #expect(try await store.timeToLive(holderSession.lease).ttl == -1)
        }
    }

    @Test func withLockReleasesTheLockWhenTheBodyReturnsOrThrows() async throws {
        try await withStore { store, _ in
            struct Failure: Error {}
            let mutex = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "w")
            let token = try await mutex.withLock { token in token }
            #expect(token > 0)
            #expect(try await store.get("w/", options: .prefix(Array("w/".utf8))).count == 0)
            await #expect(throws: Failure.self) { try await mutex.withLock { _ in throw Failure() } }
            #expect(try await store.get("w/", options: .prefix(Array("w/".utf8))).count == 0)
        }
    }

    @Test func withLockCancelsItsBodyWhenTheSessionIsLost() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 60)
            let mutex = DistributedMutex(session: session, prefix: "w")
            let cancelled = Latch()
            let running = Latch()
            let task = Task {
                try await mutex.withLock { _ in
                    running.open()
                    do {
                        try await Task.sleep(for: .seconds(30))
                    } catch {
                        cancelled.open()
                        throw error
                    }
                }
            }
            #expect(await eventually { running.isOpen })
            let started = ContinuousClock.now
            _ = try await store.revokeLease(session.lease)   // the lease is lost
            let error = await concurrencyError { try await task.value }
            #expect(error?.code == .sessionExpired)
            #expect(cancelled.isOpen)
            // Seen from the key's delete, long before the session's first refresh (TTL 60 s:
            // 20 s after the grant) could have noticed the revoke.
            #expect(ContinuousClock.now - started < .seconds(12), "the body was cancelled only by the session's refresh")
        }
    }
}
