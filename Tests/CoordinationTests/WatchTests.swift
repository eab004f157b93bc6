import Coordination
import Foundation
import Testing

/// Collects events from a watch until `count` have arrived (or `timeout` passes).
func collect(_ stream: AsyncThrowingStream<WatchResponse, any Error>, events count: Int, timeout: Duration = .seconds(10)) async throws -> [WatchResponse] {
    try await withThrowingTaskGroup(of: [WatchResponse]?.self) { group in
        group.addTask {
            var responses: [WatchResponse] = []
            var seen = 0
            for try await response in stream {
                responses.append(response)
                seen += response.events.count
                if seen >= count { break }
            }
            return responses
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        let first = try await group.next()!
        group.cancelAll()
        return try #require(first, "watch delivered fewer than \(count) events within \(timeout)")
    }
}

@Suite struct WatchTests {
    @Test func eventsArriveInRevisionOrderWithEachRevisionTogether() async throws {
        try await withStore { store, _ throws in
            let start = try await store.get("w/").header.revision + 1
            let stream = store.watch("w/", options: .prefix(Array("w/".utf8), startRevision: start))
            _ = try await store.put("w/a", "1")                                   // 2
            _ = try await store.put("elsewhere", "1")                             // 3, not watched
            _ = try await store.put("w/b", "1")                                   // 4
            _ = try await store.txn(Txn(success: [.put(key: Array("w/c".utf8), value: [1], options: PutOptions()),
                                                  .delete(key: Array("w/a".utf8), rangeEnd: [], prevKV: false)]))   // 5
            let responses = try await collect(stream, events: 4)
            let events = responses.flatMap(\.events)
            #expect(events.map(\.kind) == [.put, .put, .put, .delete])
            #expect(events.map(\.kv.keyString) == ["w/a", "w/b", "w/c", "w/a"])
            #expect(events.map(\.kv.modRevision) == [2, 4, 5, 5])
            // Both events of revision 5 are in one response.
            #expect(responses.contains { $0.events.map(\.kv.modRevision) == [5, 5] } || responses.contains { $0.events.filter { $0.kv.modRevision == 5 }.count == 2 })
            await store.close()
        }
    }

    /// The log reader checks the store's identity behind each read with MULTI, HMGET,
    /// GET and EXEC; a Redis user that may not run MULTI and EXEC gets the same events,
    /// the check then run by a script (EVALSHA).
    @Test(arguments: [false, true]) func theReaderChecksTheStoreWithMultiOrWhereRefusedWithAScript(multiRefused: Bool) async throws {
        try await RedisServer.withServer { server in
            let admin = try await RedisConnection.connect(server.configuration)
            _ = try await admin.send(["ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all"].map { Array($0.utf8) })
            if multiRefused { _ = try await admin.send(["ACL", "SETUSER", "app", "-multi", "-exec"].map { Array($0.utf8) }) }
            var configuration = server.configuration
            configuration.username = "app"
            configuration.password = "pw"
            let store = try await CoordinationClient.connect(configuration)
            let start = try await store.get("w/").header.revision + 1
            _ = try await admin.send("CONFIG", "RESETSTAT")
            let stream = store.watch("w/", options: .prefix(Array("w/".utf8), startRevision: start))
            // The first event may come from the watch's own catch-up read; once it is
            // live, only the reader hands events out.
            let writer = Task {
                _ = try await store.put("w/1", "v")
                try await Task.sleep(for: .milliseconds(500))
                for index in 2...3 { _ = try await store.put("w/\(index)", "v") }
            }
            let events = try await collect(stream, events: 3).flatMap(\.events)
            try await writer.value
            #expect(events.map(\.kv.keyString) == ["w/1", "w/2", "w/3"])
            #expect(events.map(\.kv.modRevision) == [start, start + 1, start + 2])
            let stats = try await admin.send("INFO", "commandstats").string ?? ""
            func calls(_ command: String) -> Int {
                guard let line = stats.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_\(command):") }),
                      let field = line.split(separator: ",").first(where: { $0.contains("calls=") }) else { return 0 }
                return Int(field.split(separator: "=").last ?? "") ?? 0
            }
            if multiRefused {
                #expect(calls("exec") == 0 && calls("evalsha") >= 1, "\(stats)")
            } else {
                // The requests go by FCALL: EVALSHA would be the identity script.
                #expect(calls("exec") >= 1 && calls("evalsha") == 0, "\(stats)")
            }
            await store.close()
            await admin.close()
        }
    }

    @Test func aWatchFromAnOldRevisionReplaysHistoryThenGoesLive() async throws {
        try await withStore { store, _ throws in
            for index in 1...5 { _ = try await store.put("k", "v\(index)") }   // revisions 2...6
            let stream = store.watch("k", options: WatchOptions(startRevision: 3, prevKV: true))
            Task { try await Task.sleep(for: .milliseconds(200)); _ = try await store.put("k", "v6") }   // 7
            let events = try await collect(stream, events: 5).flatMap(\.events)
            #expect(events.map(\.kv.modRevision) == [3, 4, 5, 6, 7])
            #expect(events.map(\.kv.valueString) == ["v2", "v3", "v4", "v5", "v6"])
            #expect(events.map { $0.prevKV?.valueString } == ["v1", "v2", "v3", "v4", "v5"])
            await store.close()
        }
    }

    @Test func filtersLeaveOutPutsOrDeletes() async throws {
        try await withStore { store, _ throws in
            let start = try await store.get("f").header.revision + 1
            let deletes = store.watch("f", options: WatchOptions(rangeEnd: [0], startRevision: start, noPut: true))
            _ = try await store.put("f1", "1")
            _ = try await store.delete("f1")
            _ = try await store.put("f2", "1")
            _ = try await store.delete("f2")
            let events = try await collect(deletes, events: 2).flatMap(\.events)
            #expect(events.map(\.kind) == [.delete, .delete])
            #expect(events.map(\.kv.keyString) == ["f1", "f2"])
            await store.close()
        }
    }

    @Test func progressNotificationsReportTheRevisionWithNoEvents() async throws {
        try await withStore { store, _ throws in
            let start = try await store.get("p").header.revision + 1
            _ = try await store.put("elsewhere", "1")   // revision 2, not watched
            var iterator = store.watch("p", options: WatchOptions(startRevision: start, progressNotify: true, progressInterval: .milliseconds(200))).makeAsyncIterator()
            let progress = try #require(try await iterator.next())
            #expect(progress.isProgressNotify)
            #expect(progress.header.revision >= 2)
            _ = try await store.put("p", "1")           // revision 3
            var next = try #require(try await iterator.next())
            while next.isProgressNotify { next = try #require(try await iterator.next()) }
            #expect(next.events.map(\.kv.modRevision) == [3])
            await store.close()
        }
    }

    @Test func aWatchFromACompactedRevisionFailsWithCompacted() async throws {
        try await withStore { store, _ throws in
            for index in 1...5 { _ = try await store.put("k", "v\(index)") }
            try await store.compact(5)
            let error = await coordinationError { for try await _ in store.watch("k", options: WatchOptions(startRevision: 3)) {} }
            #expect(error?.code == .compacted)
            #expect(error?.message.contains("oldest available is 5") == true)
            await store.close()
        }
    }

    /// A client whose watches have ended stops reading the log (its reader connection
    /// closes after the linger); a later watch starts a reader again and sees exactly
    /// the changes after it started, and one from an old revision the whole history.
    @Test func theLogReaderStopsWhenTheLastWatchEndsAndAWatchAfterwardsMissesNothing() async throws {
        try await withStore { store, redis throws in
            func readerConnected() async throws -> Bool {
                (try await redis.send("CLIENT", "LIST").string ?? "").contains("name=coord-watch-coord")
            }
            do {
                let first = store.watch("idle/k")
                Task { try await Task.sleep(for: .milliseconds(200)); _ = try await store.put("idle/k", "1") }   // 2
                #expect(try await collect(first, events: 1).flatMap(\.events).map(\.kv.modRevision) == [2])
                #expect(try await readerConnected())
            }
            // The watch has ended (its stream is gone): after the linger the reader goes.
            let ended = ContinuousClock.now
            while try await readerConnected() {
                guard ContinuousClock.now - ended < .seconds(15) else {
                    Issue.record("the log reader kept running without watchers")
                    return
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(ContinuousClock.now - ended >= .seconds(1), "the reader stopped before its linger")
            _ = try await store.put("idle/k", "2")                               // 3, before any watch
            let later = store.watch("idle/k")
            let replay = store.watch("idle/k", options: WatchOptions(startRevision: 2))
            // The later watch is live once the reader runs again; then revision 4.
            let started = ContinuousClock.now
            while !(try await readerConnected()) {
                guard ContinuousClock.now - started < .seconds(10) else {
                    Issue.record("no reader started for the new watch")
                    return
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            try await Task.sleep(for: .milliseconds(200))
            _ = try await store.put("idle/k", "3")                               // 4
            #expect(try await collect(later, events: 1).flatMap(\.events).map(\.kv.modRevision) == [4])
            #expect(try await collect(replay, events: 3).flatMap(\.events).map(\.kv.modRevision) == [2, 3, 4])
            await store.close()
        }
    }

    @Test func everyWatcherSeesEveryEventOnceInOrderAcrossReaderConnectionKills() async throws {
        try await withStore { store, redis throws in
            let writers = 8, putsPerWriter = 50, watcherCount = 32
            let total = writers * putsPerWriter
            let streams = (0..<watcherCount).map { _ in store.watch("load/", options: .prefix(Array("load/".utf8), startRevision: 2)) }
            let watchers = streams.map { stream in Task { try await collect(stream, events: total, timeout: .seconds(60)) } }
            // The kills below target a running reader, not the opening of the first one.
            let started = ContinuousClock.now
            while !(try await redis.send("CLIENT", "LIST").string ?? "").contains("name=coord-watch-coord") {
                #expect(ContinuousClock.now - started < .seconds(10), "the watch reader did not start")
                try await Task.sleep(for: .milliseconds(10))
            }
            try await Task.sleep(for: .milliseconds(100))
            // Kill the log reader's connection (every normal client but the one sending the
            // kill, which is also the writers' connection) several times during the writes.
            let killer = Task { () -> Int in
                var kills = 0
                for _ in 0..<5 {
                    try await Task.sleep(for: .milliseconds(40))
                    kills += Int((try? await redis.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))?.int ?? 0)
                }
                return kills
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        for index in 0..<putsPerWriter {
                            try await Task.sleep(for: .milliseconds(3))
                            while true {
                                do { _ = try await store.put("load/\(writer)/\(index)", "v"); break }
                                catch let error as RedisError where error.code == .outcomeUnknown || error.code == .connectionLost || error.code == .connectionRefused {
                                    // A killed connection: the put may have run; rewrite (a new revision) only if absent.
                                    if try await store.get("load/\(writer)/\(index)").kvs.isEmpty == false { break }
                                }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await killer.value >= 3, "the reader's connection was not killed during the writes")
            let revision = try await store.get("load/0/0").header.revision
            for watcher in watchers {
                let events = try await watcher.value.flatMap(\.events)
                let revisions = events.map(\.kv.modRevision)
                #expect(revisions == Array(2...revision), "a watcher saw \(revisions.count) events, expected revisions 2...\(revision)")
                #expect(Set(events.map(\.kv.keyString)).count == total)
            }
            await store.close()
        }
    }
}
