import Coordination
import Foundation
import Testing

/// Runs `body` with a store in a fresh private Redis.
func withStore<Result: Sendable>(namespace: String = "coord", _ body: (CoordinationClient, RedisConnection) async throws -> Result) async throws -> Result {
    try await RedisServer.withServer { server in
        let connection = try await RedisConnection.connect(server.configuration)
        let store = CoordinationClient(redis: connection, namespace: namespace)
        do {
            let result = try await body(store, connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }
}

func coordinationError(_ body: () async throws -> Void) async -> CoordinationError? {
    do {
        try await body()
        return nil
    } catch let error as CoordinationError {
        return error
    } catch {
        return nil
    }
}

@Suite struct KVTests {
    @Test func everyLuaScriptIsEmbedded() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let manifest = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        let scripts = try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("lua").path).filter { $0.hasSuffix(".lua") }
        #expect(!scripts.isEmpty)
        for script in scripts {
            #expect(manifest.contains(".embedInCode(\"../../lua/\(script)\")"), "lua/\(script) is not embedded in Package.swift")
        }
    }

    @Test func everyRedisKeyOfANamespaceCarriesItsHashTag() async throws {
        try await withStore(namespace: "tagged") { store, redis throws in
            _ = try await store.put("a", "1")
            _ = try await store.put("a", "2")
            _ = try await store.delete("a")
            let keys = (try await redis.send("KEYS", "*").array ?? []).compactMap(\.string)
            #expect(!keys.isEmpty)
            #expect(keys.allSatisfy { $0.hasPrefix("{tagged}:") }, "\(keys)")
        }
    }

    @Test func namespacesAreIndependentStores() async throws {
        try await withStore { first, redis throws in
            let second = CoordinationClient(redis: redis, namespace: "other")
            _ = try await first.put("k", "first")
            _ = try await first.put("k", "again")
            #expect(try await second.get("k").kvs.isEmpty)
            #expect(try await second.put("k", "second").header.revision == 2)
            #expect(try await first.get("k").kvs.first?.valueString == "again")
            #expect(try await first.get("k").header.revision == 3)
        }
    }

    @Test func binaryKeysAndValuesWithNulBytes() async throws {
        try await withStore { store, _ throws in
            let key: [UInt8] = [0x61, 0, 0x62, 0xff]
            let value: [UInt8] = [0, 1, 0, 0xfe, 13, 10]
            _ = try await store.put(key, value)
            _ = try await store.put([0x61, 0], [1])
            let exact = try await store.get(key)
            #expect(exact.kvs.map(\.value) == [value])
            let prefixed = try await store.get([0x61, 0], options: .prefix([0x61, 0]))
            #expect(prefixed.kvs.map(\.key) == [[0x61, 0], key])
        }
    }

    @Test func badInputGetsClearErrorsAndChangesNothing() async throws {
        try await withStore { store, _ throws in
            var error = await coordinationError { _ = try await store.put("", "v") }
            #expect(error?.code == .emptyKey)
            error = await coordinationError { _ = try await store.put(Array("k".utf8), [UInt8](repeating: 1, count: 1_572_865)) }
            #expect(error?.code == .valueTooLarge)
            #expect(error?.message.contains("1572865") == true)
            let tooMany = Txn(success: (0..<129).map { .put(key: Array("k\($0)".utf8), value: [], options: PutOptions()) })
            error = await coordinationError { _ = try await store.txn(tooMany) }
            #expect(error?.code == .tooManyOps)
            error = await coordinationError { _ = try await store.put("k", "v", options: PutOptions(lease: 42)) }
            #expect(error?.code == .leaseNotFound)
            error = await coordinationError { _ = try await store.put(Array("k".utf8), [], options: PutOptions(ignoreValue: true)) }
            #expect(error?.code == .keyNotFound)
            error = await coordinationError { _ = try await store.put("k", "v", options: PutOptions(ignoreValue: true)) }
            #expect(error?.code == .invalidArgument && error?.message.contains("value is provided") == true)
            let nested = Txn(success: [.txn(Txn(success: (0..<100).map { .put(key: Array("n\($0)".utf8), value: [], options: PutOptions()) }))]
                             + (0..<100).map { .put(key: Array("m\($0)".utf8), value: [], options: PutOptions()) })
            error = await coordinationError { _ = try await store.txn(nested) }
            #expect(error?.code == .tooManyOps)
            error = await coordinationError { _ = try await store.get("k", options: RangeOptions(revision: 5)) }
            #expect(error?.code == .futureRevision)
            #expect(error?.message.contains("current revision is 1") == true)
            // A txn that fails validation writes nothing, not even its first put.
            let partial = Txn(success: [.put(key: Array("x".utf8), value: [1], options: PutOptions()),
                                        .put(key: Array("y".utf8), value: [1], options: PutOptions(lease: 7))])
            error = await coordinationError { _ = try await store.txn(partial) }
            #expect(error?.code == .leaseNotFound)
            #expect(try await store.get("x").kvs.isEmpty)
            #expect(try await store.get("x").header.revision == 1)
        }
    }

    @Test func filtersAndSortTargetsOtherThanKey() async throws {
        try await withStore { store, _ throws in
            _ = try await store.put("a", "3")   // rev 2
            _ = try await store.put("b", "1")   // rev 3
            _ = try await store.put("c", "2")   // rev 4
            _ = try await store.put("a", "4")   // rev 5, a version 2
            let all = RangeOptions(rangeEnd: [0])
            var options = all
            options.sortTarget = .value
            #expect(try await store.get("a", options: options).kvs.map(\.keyString) == ["b", "c", "a"])
            options.sortOrder = .descend
            options.sortTarget = .mod
            #expect(try await store.get("a", options: options).kvs.map(\.keyString) == ["a", "c", "b"])
            options = all
            options.minModRevision = 3
            options.maxModRevision = 4
            let filtered = try await store.get("a", options: options)
            #expect(filtered.kvs.map(\.keyString) == ["b", "c"])
            #expect(filtered.count == 3)
            options = all
            options.maxCreateRevision = 2
            #expect(try await store.get("a", options: options).kvs.map(\.keyString) == ["a"])
            options = all
            options.keysOnly = true
            #expect(try await store.get("a", options: options).kvs.allSatisfy { $0.value.isEmpty })
        }
    }

    /// A page of a large prefix (a limit, in key order, as clients paginate) holds the
    /// first keys with the whole range's count, and is read from the keys it returns:
    /// one HMGET, no read per key of the range. Whole ranges past the script's read
    /// slices (1,000 keys) come back complete and in order.
    @Test func aPageOfALargeRangeHasItsFirstKeysTheWholeCountAndReadsOnlyThem() async throws {
        try await withStore { store, redis throws in
            let total = 2_500
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<total {
                    let key = String(format: "page/%05d", index)
                    group.addTask { _ = try await store.put(key, "value of \(key)") }
                }
                try await group.waitForAll()
            }
            _ = try await store.delete(Array("page/00003".utf8))
            _ = try await store.put("pagf", "outside the prefix")
            let names = (0..<total).filter { $0 != 3 }.map { String(format: "page/%05d", $0) }
            var options = RangeOptions.prefix(Array("page/".utf8))

            let whole = try await store.get("page/", options: options)
            #expect(whole.count == Int64(total - 1) && !whole.more)
            let wholeKeys = whole.kvs.map(\.keyString)
            #expect(wholeKeys == names, "\(wholeKeys.count) keys, from \(wholeKeys.first ?? "-") to \(wholeKeys.last ?? "-")")
            #expect(whole.kvs.allSatisfy { $0.value == Array("value of \($0.keyString)".utf8) && $0.version == 1 })

            _ = try await redis.send("CONFIG", "RESETSTAT")
            options.limit = 10
            let page = try await store.get("page/", options: options)
            #expect(page.kvs.map(\.keyString) == Array(names.prefix(10)))
            #expect(page.count == Int64(total - 1) && page.more)
            let stats = try await redis.send("INFO", "commandstats").string ?? ""
            #expect(stats.contains("cmdstat_hmget:calls=2,"), "one HMGET for the page besides the script's own identity read: \(stats)")
            #expect(!stats.contains("cmdstat_hget:"), "the page read keys one by one: \(stats)")

            options.sortOrder = .descend
            let last = try await store.get("page/", options: options)
            #expect(last.kvs.map(\.keyString) == Array(names.suffix(10).reversed()))
            #expect(last.count == Int64(total - 1) && last.more)

            options = RangeOptions(rangeEnd: Array("page/01500".utf8), limit: 1_200)
            let slice = try await store.get("page/00002", options: options)
            let sliceKeys = slice.kvs.map(\.keyString)
            #expect(sliceKeys == Array(names[2..<1_202]), "\(sliceKeys.count) keys, from \(sliceKeys.first ?? "-") to \(sliceKeys.last ?? "-")")
            #expect(slice.count == 1_497 && slice.more)

            options = RangeOptions.prefix(Array("page/".utf8))
            options.countOnly = true
            let counted = try await store.get("page/", options: options)
            #expect(counted.count == Int64(total - 1) && counted.kvs.isEmpty && !counted.more)
            options.countOnly = false
            options.keysOnly = true
            options.limit = 3
            let keys = try await store.get("page/", options: options)
            #expect(keys.kvs.map(\.keyString) == Array(names.prefix(3)) && keys.kvs.allSatisfy { $0.value.isEmpty && $0.createRevision > 0 })
        }
    }

    @Test func prefixEndFollowsEtcd() {
        #expect(RangeOptions.prefixEnd(Array("abc".utf8)) == Array("abd".utf8))
        #expect(RangeOptions.prefixEnd([0x61, 0xff]) == [0x62])
        #expect(RangeOptions.prefixEnd([0xff, 0xff]) == [0])
        #expect(RangeOptions.prefixEnd([]) == [0])
    }
}

@Suite struct CompactionTests {
    @Test func compactionKeepsTheNewestVersionAtOrBelowAndFreesTheRest() async throws {
        try await withStore { store, redis throws in
            for round in 1...5 { _ = try await store.put("a", "a\(round)") }   // revisions 2...6
            _ = try await store.put("gone", "x")                                 // 7
            _ = try await store.delete("gone")                                   // 8
            _ = try await store.put("a", "a6")                                   // 9
            #expect(try await redis.send("HLEN", "{coord}:hist").int == 7)      // a2...a6, gone, tombstone
            try await store.compact(8, chunk: 2)
            // a's newest version at or below 8 (a5 at revision 6) stays readable at 8; the rest is gone.
            #expect(try await store.get("a", options: RangeOptions(revision: 8)).kvs.first?.valueString == "a5")
            #expect(try await redis.send("HLEN", "{coord}:hist").int == 1)
            #expect(try await store.get("gone", options: RangeOptions(revision: 8)).kvs.isEmpty)
            let error = await coordinationError { _ = try await store.get("a", options: RangeOptions(revision: 7)) }
            #expect(error?.code == .compacted)
            #expect(error?.message.contains("oldest available is 8") == true)
            // The event log keeps revisions 8 and 9 only.
            #expect(try await redis.send("XLEN", "{coord}:log").int == 2)
            // Compacting again at or below 8 is an error; above the current revision too.
            #expect(await coordinationError { try await store.compact(8) }?.code == .compacted)
            #expect(await coordinationError { try await store.compact(10) }?.code == .futureRevision)
            try await store.compact(9)
            #expect(try await redis.send("HLEN", "{coord}:hist").int == 0)
        }
    }
}

@Suite struct RetentionTests {
    @Test func runCompactsAutomaticallyKeepingTheRequestedHistory() async throws {
        try await withStore { store, redis throws in
            for index in 1...20 { _ = try await store.put("r", "v\(index)") }   // revisions 2...21
            let background = Task { try await store.run(retainRevisions: 5) }
            defer { background.cancel() }
            var compacted: Int64 = 0
            let deadline = ContinuousClock.now + .seconds(30)   // under load the first round may come late
            while compacted == 0 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
                compacted = try await redis.send("GET", "{coord}:compact").int ?? 0
            }
            #expect(compacted == 17)   // revisions 17...21 remain readable
            #expect(try await store.get("r", options: RangeOptions(revision: 17)).kvs.first?.valueString == "v16")
            #expect(await coordinationError { _ = try await store.get("r", options: RangeOptions(revision: 16)) }?.code == .compacted)
        }
    }
}

@Suite struct EdgeCaseTests {
    @Test func deletingThousandsOfKeysIsOneRevisionWithOneLogEntry() async throws {
        try await withStore { store, redis throws in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<5_000 { group.addTask { _ = try await store.put("many/\(index)", "v") } }
                try await group.waitForAll()
            }
            let start = try await store.get("many/0").header.revision + 1
            let stream = store.watch("many/", options: .prefix(Array("many/".utf8), startRevision: start))
            let deleted = try await store.delete(Array("many/".utf8), rangeEnd: RangeOptions.prefixEnd(Array("many/".utf8)))
            #expect(deleted.deleted == 5_000)
            #expect(deleted.header.revision == 5_002)
            #expect(try await redis.send("GET", "{coord}:rev").int == 5_002)
            let events = try await collect(stream, events: 5_000).flatMap(\.events)
            #expect(events.count == 5_000 && events.allSatisfy { $0.kind == .delete && $0.kv.modRevision == 5_002 })
            await store.close()
        }
    }

    @Test func anIgnoreValuePutAfterAFromKeyDeleteInTheTxnWritesNothing() async throws {
        try await withStore { store, _ throws in
            _ = try await store.put("a", "1")
            _ = try await store.put("b", "1")
            let txn = Txn(success: [.delete(key: Array("a".utf8), rangeEnd: [0], prevKV: false),
                                    .put(key: Array("b".utf8), value: [], options: PutOptions(ignoreValue: true))])
            #expect(await coordinationError { _ = try await store.txn(txn) }?.code == .keyNotFound)
            let after = try await store.get("a", options: RangeOptions(rangeEnd: [0]))
            #expect(after.kvs.count == 2 && after.header.revision == 3)
        }
    }

    @Test func historyOfAKeyIsFoundPastKeysThatExtendItWithANulByte() async throws {
        try await withStore { store, _ throws in
            _ = try await store.put("user", "old")                       // revision 2
            _ = try await store.put("user", "new")                       // revision 3
            for index in 0..<40 {                                          // children "user\0<16 digits>"
                let child = Array("user".utf8) + [0] + Array(String(format: "%016d", index).utf8)
                _ = try await store.put(child, [1])
                _ = try await store.put(child, [2])
            }
            #expect(try await store.get("user", options: RangeOptions(revision: 2)).kvs.first?.valueString == "old")
            try await store.compact(3)
            #expect(try await store.get("user", options: RangeOptions(revision: 3)).kvs.first?.valueString == "new")
            // A range that ends inside the NUL-extended keys still sees the key's history.
            _ = try await store.delete("user")
            let past = try await store.get(Array("user".utf8), options: RangeOptions(rangeEnd: Array("user".utf8) + [0], revision: 4))
            #expect(past.kvs.map(\.valueString) == ["new"])
        }
    }
}
