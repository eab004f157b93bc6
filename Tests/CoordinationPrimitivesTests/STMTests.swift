import CoordinationPrimitives
import Testing

@Suite struct STMTests {
    /// etcd's TestSTMConflict: concurrent transfers between 5 keys keep the total.
    @Test(arguments: [STMIsolation.repeatableReads, .serializable, .serializableSnapshot])
    func concurrentTransfersKeepTheTotal(isolation: STMIsolation) async throws {
        try await withStore { store, server in
            let keys = (0..<5).map { "foo-\($0)" }
            for key in keys { _ = try await store.put(key, "100") }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for source in keys {
                    let client = try await connectClient(server)
                    group.addTask {
                        try await client.stm(isolation: isolation) { tx in
                            let destination = keys.filter { $0 != source }.randomElement()!
                            let from = Int(try await tx.get(source) ?? "0")!
                            let to = Int(try await tx.get(destination) ?? "0")!
                            guard from > 0 else { return }
                            let amount = Int.random(in: 0..<from) / 2
                            tx.put(source, String(from - amount))
                            tx.put(destination, String(to + amount))
                        }
                        await client.close()
                    }
                }
                try await group.waitForAll()
            }
            var sum = 0
            for key in keys { sum += Int(try await store.get(key).kvs[0].valueString)! }
            #expect(sum == 500)
        }
    }

    /// etcd's TestSTMPutNewKey.
    @Test func aPutOfANewKeyIsCommitted() async throws {
        try await withStore { store, _ in
            try await store.stm(isolation: .repeatableReads) { tx in tx.put("foo", "bar") }
            #expect(try await store.get("foo").kvs.first?.valueString == "bar")
        }
    }

    /// etcd's TestSTMAbort: an error (or cancellation) in the body writes nothing.
    @Test func anErrorThrownByTheBodyAbortsWithNothingWritten() async throws {
        try await withStore { store, _ throws in
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await store.stm(isolation: .repeatableReads) { tx in
                    tx.put("foo", "baz")
                    throw Abort()
                }
            }
            #expect(try await store.get("foo").count == 0)
            let task = Task {
                try await store.stm { tx in
                    tx.put("foo", "bap")
                    withUnsafeCurrentTask { $0?.cancel() }
                    try Task.checkCancellation()
                }
            }
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(try await store.get("foo").count == 0)
        }
    }

    /// etcd's TestSTMSerialize: serializable reads see one snapshot even while every key changes.
    @Test(arguments: [STMIsolation.serializable, .serializableSnapshot])
    func serializableReadsSeeOneSnapshot(isolation: STMIsolation) async throws {
        try await withStore { store, server in
            let keys = (0..<5).map { "foo-\($0)" }
            let writer = try await connectClient(server)
            let writes = Task {
                for round in 0..<50 {
                    _ = try await writer.txn(Txn(success: keys.map { .put(key: Array($0.utf8), value: Array(String(round).utf8), options: PutOptions()) }))
                }
            }
            for _ in 0..<50 {
                let seen = try await store.stm(isolation: isolation) { tx -> [String] in
                    var values: [String] = []
                    for key in keys {
                        values.append(try await tx.get(key) ?? "")
                        await Task.yield()
                    }
                    return values
                }
                #expect(Set(seen.value).count == 1, "mixed snapshot: \(seen.value)")
            }
            try await writes.value
            await writer.close()
        }
    }

    /// etcd's TestSTMApplyOnConcurrentDeletion: a key deleted after it was read makes the body run again.
    @Test func aConcurrentDeleteOfAReadKeyMakesTheBodyRunAgain() async throws {
        try await withStore { store, _ in
            _ = try await store.put("foo", "bar")
            let tries = Locked(0)
            let result = try await store.stm(isolation: .repeatableReads) { tx in
                let attempt = tries.withLock { $0 += 1; return $0 }
                _ = try await tx.get("foo")
                if attempt == 1 { _ = try await store.delete("foo") }
                tx.put("foo2", "bar2")
            }
            #expect(tries.value == 2)
            #expect(result.attempts == 2)
            #expect(try await store.get("foo2").kvs.first?.valueString == "bar2")
        }
    }

    /// etcd's TestSTMSerializableSnapshotPut: a put of a key written since the snapshot conflicts
    /// only when it changed after the snapshot; a second run puts again.
    @Test func serializableSnapshotCommitsAPutOfAnUnreadKey() async throws {
        try await withStore { store, _ in
            _ = try await store.put("a", "0")
            let body: (STMTransaction) async throws -> Void = { tx in
                _ = try await tx.get("a")
                tx.put("b", "1")
            }
            let first = try await store.stm(isolation: .serializableSnapshot, body)
            let second = try await store.stm(isolation: .serializableSnapshot, body)
            #expect(first.attempts == 1 && second.attempts == 1)
            #expect(try await store.get("b").kvs.first?.version == 2)
        }
    }

    @Test func serializableSnapshotConflictsOnAWriteToAKeyChangedAfterTheSnapshot() async throws {
        try await withStore { store, _ in
            _ = try await store.put("a", "0")
            let tries = Locked(0)
            try await store.stm(isolation: .serializableSnapshot) { tx in
                let attempt = tries.withLock { $0 += 1; return $0 }
                _ = try await tx.get("a")
                if attempt == 1 { _ = try await store.put("b", "other") }
                tx.put("b", "mine")
            }
            #expect(tries.value == 2)
            // Plain serializable only checks what was read.
            tries.withLock { $0 = 0 }
            try await store.stm(isolation: .serializable) { tx in
                let attempt = tries.withLock { $0 += 1; return $0 }
                _ = try await tx.get("a")
                if attempt == 1 { _ = try await store.put("b", "other") }
                tx.put("b", "mine")
            }
            #expect(tries.value == 1)
        }
    }

    @Test func readCommittedNeverConflicts() async throws {
        try await withStore { store, _ in
            _ = try await store.put("a", "0")
            let result = try await store.stm(isolation: .readCommitted) { tx in
                _ = try await tx.get("a")
                _ = try await store.put("a", "changed")
                tx.put("b", "1")
            }
            #expect(result.attempts == 1)
        }
    }

    @Test func readsSeeTheTransactionsOwnWritesAndDeletes() async throws {
        try await withStore { store, _ in
            _ = try await store.put("a", "old")
            try await store.stm { tx throws in
                tx.put("a", "new")
                #expect(try await tx.get("a") == "new")
                tx.delete("a")
                #expect(try await tx.get("a") == nil)
                #expect(try await tx.get("missing") == nil)
                #expect(try await tx.rev("missing") == 0)
            }
            #expect(try await store.get("a").count == 0)
        }
    }

    @Test func revReturnsTheModRevisionOfTheReadKey() async throws {
        try await withStore { store, _ in
            let put = try await store.put("a", "1")
            let rev = try await store.stm { tx in try await tx.rev("a") }
            #expect(rev.value == put.header.revision)
        }
    }

    @Test func prefetchedKeysAreReadBeforeTheBodyInOneRequest() async throws {
        try await withStore { store, _ in
            _ = try await store.put("a", "1")
            _ = try await store.put("b", "2")
            let tries = Locked(0)
            let result = try await store.stm(prefetch: [Array("a".utf8), Array("b".utf8)]) { tx in
                // Changed after the prefetch: the body still sees the prefetched snapshot
                // and the commit conflicts once.
                if tries.withLock({ $0 += 1; return $0 }) == 1 { _ = try await store.put("a", "changed") }
                return (try await tx.get("a"), try await tx.get("b"))
            }
            #expect(result.attempts == 2)
            #expect(result.value.0 == "changed" && result.value.1 == "2")
        }
    }

    @Test func conflictsBeyondTheBoundFailWithConflictRetriesExhausted() async throws {
        try await withStore { store, _ in
            _ = try await store.put("a", "0")
            let tries = Locked(0)
            let error = await concurrencyError {
                try await store.stm(maxAttempts: 3) { tx in
                    tries.withLock { $0 += 1 }
                    _ = try await tx.get("a")
                    _ = try await store.put("a", "interference")
                    tx.put("b", "never")
                }
            }
            #expect(error?.code == .conflictRetriesExhausted)
            #expect(tries.value == 3)
            #expect(try await store.get("b").count == 0)
        }
    }

    /// The bank: 100 accounts, 8 concurrent transferers on their own clients; the total is exact.
    @Test(arguments: [STMIsolation.serializableSnapshot, .serializable, .repeatableReads])
    func bankTransfersKeepTheTotalExact(isolation: STMIsolation) async throws {
        try await withStore { store, server in
            let accounts = (0..<100).map { String(format: "bank/%03d", $0) }
            _ = try await store.txn(Txn(success: accounts.map { .put(key: Array($0.utf8), value: Array("1000".utf8), options: PutOptions()) }))
            let conflicts = Locked(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    let client = try await connectClient(server)
                    group.addTask {
                        for _ in 0..<60 {
                            let from = accounts.randomElement()!
                            var to = accounts.randomElement()!
                            while to == from { to = accounts.randomElement()! }
                            let result = try await client.stm(isolation: isolation) { tx in
                                let a = Int(try await tx.get(from)!)!
                                let b = Int(try await tx.get(to)!)!
                                let amount = min(a, Int.random(in: 1...50))
                                tx.put(from, String(a - amount))
                                tx.put(to, String(b + amount))
                            }
                            conflicts.withLock { $0 += result.attempts - 1 }
                        }
                        await client.close()
                    }
                }
                try await group.waitForAll()
            }
            let all = try await store.get("bank/", options: .prefix(Array("bank/".utf8)))
            #expect(all.kvs.count == 100)
            #expect(all.kvs.reduce(0) { $0 + Int($1.valueString)! } == 100_000)
        }
    }
}
