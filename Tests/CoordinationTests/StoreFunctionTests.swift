@testable import Coordination
import Foundation
import Testing

/// kv.lua as a Redis function (FCALL) and as a script (EVALSHA): the same answers, the
/// function loaded when missing, and the script wherever Redis would refuse the
/// function but run the script.
@Suite(.timeLimit(.minutes(3))) struct StoreFunctionTests {
    /// The `calls=` count of `command` in INFO commandstats (0 when absent).
    static func calls(_ command: String, _ stats: String) -> Int {
        stats.split(separator: "\r\n").first { $0.hasPrefix("cmdstat_\(command):") }
            .flatMap { $0.split(separator: ",").first?.split(separator: "=").last }.flatMap { Int($0) } ?? 0
    }

    static func libraries(_ connection: RedisConnection) async throws -> [String] {
        StoreFunction.libraryNames(try await connection.send("FUNCTION", "LIST"))
    }

    @Test func requestsRunAsARedisFunctionLoadedWhenMissingAlsoAfterFUNCTIONFLUSH() async throws {
        try await withStore(namespace: "fn") { store, redis in
            #expect(try await Self.libraries(redis).isEmpty)
            _ = try await redis.send("CONFIG", "RESETSTAT")
            #expect(try await store.put("a", "1").header.revision == 2)
            #expect(try await Self.libraries(redis) == [CoordinationClient.kvFunctionName])
            #expect(try await store.get("a").kvs.first?.value == Array("1".utf8))
            var stats = try await redis.send("INFO", "commandstats").string ?? ""
            #expect(Self.calls("fcall", stats) == 3, "the put (refused: not loaded), its retry and the get: \(stats)")
            #expect(Self.calls("evalsha", stats) == 0, "\(stats)")
            _ = try await redis.send("FUNCTION", "FLUSH")
            _ = try await redis.send("CONFIG", "RESETSTAT")
            #expect(try await store.put("a", "2").header.revision == 3)
            #expect(try await Self.libraries(redis) == [CoordinationClient.kvFunctionName])
            stats = try await redis.send("INFO", "commandstats").string ?? ""
            #expect(Self.calls("function|load", stats) == 1 && Self.calls("evalsha", stats) == 0, "\(stats)")
        }
    }

    /// An upgrade leaves no library behind: a client connecting deletes the libraries
    /// of other script versions (and nobody else's), and a client of the other version,
    /// still running, loads its own again at its next call.
    @Test func connectingDeletesTheLibrariesOfOtherScriptVersions() async throws {
        try await RedisServer.withServer { server in
            let redis = try await RedisConnection.connect(server.configuration)
            // Another version's library: the same script under another version name, with
            // a client of its own; a user's library whose name only begins with "coordkv_".
            let otherScript = RedisScript(CoordinationClient.kvScriptSource + "\n-- another version\n")
            let other = StoreFunction(otherScript)
            #expect(other.name != CoordinationClient.kvFunctionName && StoreFunction.isVersionName(other.name))
            _ = try await redis.send("FUNCTION", "LOAD", other.library)
            _ = try await redis.send("FUNCTION", "LOAD", "#!lua name=coordkv_tools\nredis.register_function('my_tool', function() return 1 end)")
            let otherClient = try await RedisConnection.connect(server.configuration)
            let keys = CoordinationClient.redisKeys("coord")
            let put = CoordinationClient.encode(.put(key: Array("k".utf8), value: Array("v1".utf8), options: PutOptions())).encoded()
            _ = try await other.run(on: otherClient, keys: keys, arguments: [put])

            let store = try await CoordinationClient.connect(url: server.url)
            let afterConnect = try await Self.libraries(redis).sorted()
            #expect(afterConnect == [CoordinationClient.kvFunctionName, "coordkv_tools"].sorted())
            #expect(try await store.get("k").kvs.first?.value == Array("v1".utf8))

            // The other version's client: its library is loaded again, and its call runs.
            _ = try await redis.send("CONFIG", "RESETSTAT")
            _ = try await other.run(on: otherClient, keys: keys, arguments: [put])
            let stats = try await redis.send("INFO", "commandstats").string ?? ""
            #expect(Self.calls("function|load", stats) == 1 && Self.calls("evalsha", stats) == 0, "\(stats)")
            #expect(try await Self.libraries(redis).sorted() == [CoordinationClient.kvFunctionName, other.name, "coordkv_tools"].sorted())
            #expect(try await store.get("k").kvs.first?.version == 2)
            await store.close()
            await otherClient.close()
            await redis.close()
        }
    }

    /// The same requests, one namespace through FCALL and one through EVALSHA, alone and
    /// batched: the same revisions, results and refusals.
    @Test func theFunctionAndTheScriptAnswerAlike() async throws {
        try await RedisServer.withServer { server in
            let redis = try await RedisConnection.connect(server.configuration)
            defer { Task { await redis.close() } }
            _ = try await redis.send("FUNCTION", "LOAD", CoordinationClient.kvFunctionLibrary)
            _ = try await redis.send("SCRIPT", "LOAD", CoordinationClient.kvScriptSource)
            let byFunction = CoordinationClient(redis: redis, namespace: "byfunction")
            let byScript = CoordinationClient(redis: redis, namespace: "byscript")
            func key(_ text: String) -> MessagePack { .bytes(Array(text.utf8)) }
            let put = { (k: String, v: String) in CoordinationClient.encodedRequest(.put(key: Array(k.utf8), value: Array(v.utf8), options: PutOptions())) }
            var prefix = RangeOptions.prefix(Array("k".utf8))
            prefix.sortTarget = .create
            prefix.sortOrder = .descend
            var past = RangeOptions()
            past.revision = 2
            var future = RangeOptions()
            future.revision = 99
            let cas = Txn(compares: [Compare(key: Array("k1".utf8), .version(1), .equal)],
                          success: [.put(key: Array("k2".utf8), value: Array("b".utf8), options: PutOptions()), .range(key: Array("k".utf8), options: prefix)],
                          failure: [.delete(key: Array("k1".utf8), rangeEnd: [], prevKV: true)])
            let calls: [[[UInt8]]] = [
                [put("k1", "a")],
                [put("k1", "a2"), CoordinationClient.encodedRequest(.range(key: Array("k1".utf8), options: RangeOptions())), put("k3", "c")],
                [CoordinationClient.encodedRequest(.txn(cas))],
                [CoordinationClient.encodedRequest(.txn(cas))],
                [CoordinationClient.encodedRequest(.range(key: Array("k".utf8), options: prefix))],
                [CoordinationClient.encodedRequest(.range(key: Array("k1".utf8), options: past))],
                [CoordinationClient.encodedRequest(.range(key: Array("k1".utf8), options: future))],
                [CoordinationClient.encodedRequest(.put(key: [], value: [], options: PutOptions()))],
                [MessagePack.array([.string("grant"), .string("7"), .int(30)]).encoded()],
                [CoordinationClient.encodedRequest(.put(key: Array("leased".utf8), value: [], options: PutOptions(lease: 7)))],
                [MessagePack.array([.string("ttl"), .string("7"), .bool(true)]).encoded(), MessagePack.array([.string("revoke"), .string("7")]).encoded()],
                [MessagePack.array([.string("keepalive"), .string("7")]).encoded()],
                [CoordinationClient.encodedRequest(.delete(key: Array("k".utf8), rangeEnd: Array("l".utf8), prevKV: true))],
            ]
            for (index, arguments) in calls.enumerated() {
                let function = try await StoreFunction(CoordinationClient.kvScript).run(on: redis, keys: byFunction.keys, arguments: arguments)
                let script = try await redis.run(CoordinationClient.kvScript, keys: byScript.keys, arguments: arguments, timeout: nil)
                let answers = arguments.count == 1 ? [(function, script)] : Array(zip(function.array ?? [], script.array ?? []))
                #expect(answers.count == arguments.count, "call \(index): \(function) \(script)")
                for (fromFunction, fromScript) in answers {
                    var a = try CoordinationClient.decodeScriptReply(fromFunction)
                    var b = try CoordinationClient.decodeScriptReply(fromScript)
                    // A lease's remaining seconds depend on when each call ran: within a second.
                    if case .array(var x) = a.result, case .array(var y) = b.result, x.first?.text == "ttl", x.count > 2, y.count > 2,
                       let left = x[2].int, let right = y[2].int {
                        #expect(abs(left - right) <= 1, "call \(index): ttl \(left) by FCALL, \(right) by EVALSHA")
                        x[2] = .int(0)
                        y[2] = .int(0)
                        a.result = .array(x)
                        b.result = .array(y)
                    }
                    #expect(a.revision == b.revision && a.result == b.result && a.failure?.code == b.failure?.code
                            && a.failure?.message == b.failure?.message, "call \(index): \(a.revision) \(a.result) \(String(describing: a.failure)) by FCALL, \(b.revision) \(b.result) \(String(describing: b.failure)) by EVALSHA")
                }
            }
            let stats = try await redis.send("INFO", "commandstats").string ?? ""
            #expect(Self.calls("fcall", stats) == calls.count && Self.calls("evalsha", stats) == calls.count, "\(stats)")
        }
    }

    /// A Redis user that may not call functions, or not load them, is served by EVALSHA,
    /// and the client stops trying the function after the first refusal.
    @Test func aUserWithoutFunctionsIsServedByTheScript() async throws {
        let users = [RedisServer.ACLUser(name: "nofcall", password: "pw", rules: "~* &* +@all -fcall -function"),
                     RedisServer.ACLUser(name: "noload", password: "pw", rules: "~* &* +@all -function")]
        try await RedisServer.withServer(.init(aclUsers: users)) { server in
            guard case .unixSocket(let path) = server.endpoint else { return }
            let admin = try await RedisConnection.connect(server.configuration)
            defer { Task { await admin.close() } }
            for (index, user) in ["nofcall", "noload"].enumerated() {
                let store = try await CoordinationClient.connect(url: "unix://\(path)?user=\(user)&password=pw")
                _ = try await admin.send("CONFIG", "RESETSTAT")
                #expect(try await store.put("k", "\(index)").header.revision == Int64(index) + 2)
                #expect(try await store.get("k").kvs.first?.value == Array("\(index)".utf8))
                _ = try await store.get("k")
                let stats = try await admin.send("INFO", "commandstats").string ?? ""
                #expect(Self.calls("evalsha", stats) == 3, "\(user): \(stats)")
                // The first refusal (at connect, by the revision read of status()) sent
                // the client to EVALSHA for a minute: no FCALL since, nor a refusal of one
                // (an ACL refusal is counted only in errorstats).
                let errors = try await admin.send("INFO", "errorstats").string ?? ""
                #expect(Self.calls("fcall", stats) == 0 && !errors.contains("errorstat_"), "\(user): \(stats)\(errors)")
                #expect(try await Self.libraries(admin).isEmpty)
                await store.close()
            }
        }
    }

    /// Over maxmemory Redis refuses a writing function whole but runs a script, refusing
    /// only its first write that can grow memory: reads and deletes go on, as on etcd
    /// under its NOSPACE alarm, and a put is refused with Redis's OOM error.
    @Test func overMaxmemoryReadsAndDeletesGoOnAndAPutIsRefused() async throws {
        try await withStore(namespace: "full") { store, redis in
            _ = try await store.put("a", "1")
            _ = try await store.put("b", "2")
            _ = try await redis.send("CONFIG", "SET", "maxmemory", "1")
            defer { Task { _ = try? await redis.send("CONFIG", "SET", "maxmemory", "0") } }
            #expect(try await store.get("a").kvs.first?.value == Array("1".utf8))
            #expect(try await store.delete("a").deleted == 1)
            do {
                _ = try await store.put("c", "3")
                Issue.record("a put over maxmemory succeeded")
            } catch {
                #expect("\(error)".contains("OOM command not allowed"), "\(error)")
            }
            _ = try await redis.send("CONFIG", "SET", "maxmemory", "0")
            #expect(try await store.put("c", "3").header.revision == 5)
        }
    }

    /// A connection that reaches another Redis process (a restart, a failover) begins a
    /// new epoch with its hello, also when that Redis is over its maxmemory: tokens of
    /// the new epoch must not repeat the old one's. The function is refused there; the
    /// script runs, and its first write is one that frees memory.
    @Test func aHelloOverMaxmemoryStillBeginsANewEpoch() async throws {
        try await withStore(namespace: "full") { store, redis in
            _ = try await store.put("a", "1")
            let before = try #require(try await redis.send("HGET", "{full}:id", "epoch").string)
            _ = try await redis.send("CONFIG", "SET", "maxmemory", "1")
            defer { Task { _ = try? await redis.send("CONFIG", "SET", "maxmemory", "0") } }
            let hello = MessagePack.array([.string("hello"), .string("another-redis-process")]).encoded()
            let reply = try await StoreFunction(CoordinationClient.kvScript).run(on: redis, keys: store.keys, arguments: [hello])
            #expect(try CoordinationClient.decodeScriptReply(reply).failure == nil)
            let after = try #require(try await redis.send("HGET", "{full}:id", "epoch").string)
            #expect(Int64(after)! > Int64(before)!, "epoch \(before) before the hello, \(after) after")
            #expect(try await redis.send("HGET", "{full}:id", "run").string == "another-redis-process")
        }
    }

    /// A server demoted to a replica refuses a writing function whole, but runs the
    /// script's reads: reads still answer there, writes get READONLY.
    @Test func aDemotedServerAnswersReadsAndRefusesWritesWithREADONLY() async throws {
        try await withStore(namespace: "demoted") { store, redis in
            _ = try await store.put("a", "1")
            _ = try await redis.send("REPLICAOF", "127.0.0.1", "1")
            defer { Task { _ = try? await redis.send("REPLICAOF", "NO", "ONE") } }
            #expect(try await store.get("a").kvs.first?.value == Array("1".utf8))
            do {
                _ = try await store.put("b", "2")
                Issue.record("a put on a replica succeeded")
            } catch {
                #expect("\(error)".contains("READONLY"), "\(error)")
            }
            _ = try await redis.send("REPLICAOF", "NO", "ONE")
            #expect(try await store.put("b", "2").header.revision == 3)
        }
    }
}
