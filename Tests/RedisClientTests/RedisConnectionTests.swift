import Foundation
import Testing
@testable import RedisClient

@Suite struct RedisConnectionTests {
    @Test(arguments: Engine.allCases)
    func decodesEveryReplyType(engine: Engine) async throws {
        try await withConnection(engine: engine) { _, connection in
            #expect(try await connection.send("SET", "k", "v") == .status("OK"))
            #expect(try await connection.send("GET", "k") == .bulkString(Array("v".utf8)))
            #expect(try await connection.send("GET", "missing") == .null)
            #expect(try await connection.send("INCRBY", "n", 41) == .integer(41))
            #expect(try await connection.send("INCR", "n").int == 42)
            #expect(try await connection.send("SET", "empty", "") == .status("OK"))
            #expect(try await connection.send("GET", "empty") == .bulkString([]))
            #expect(try await connection.send("LRANGE", "nolist", 0, -1) == .array([]))
            try await connection.send("RPUSH", "list", "a", "b")
            #expect(try await connection.send("LRANGE", "list", 0, -1) == .array([.bulkString(Array("a".utf8)), .bulkString(Array("b".utf8))]))
            // Nested arrays, integers, nulls and nested errors, through EVAL.
            let nested = try await connection.send("EVAL", "return {1, 'two', {3, false}, redis.error_reply('BOOM inside')}", 0)
            #expect(nested == .array([.integer(1), .bulkString(Array("two".utf8)), .array([.integer(3), .null]), .error("BOOM inside")]))
            // A top-level error reply throws, with the server's text.
            let error = await redisError { try await connection.send("LPUSH", "k", "x") }
            #expect(error?.code == .server)
            #expect(error?.serverErrorPrefix == "WRONGTYPE")
            let unknown = await redisError { try await connection.send("NOSUCHCOMMAND") }
            #expect(unknown?.code == .server && unknown?.message.contains("unknown command") == true)
            // The connection is still usable after error replies.
            #expect(try await connection.send("PING") == .status("PONG"))
        }
    }

    /// Commands sent together (the watch reader's blocking read with its check behind
    /// it) run in order, each with its own outcome, a large one and an error among them,
    /// and the commands behind a blocking read run once it returns.
    @Test(arguments: Engine.allCases)
    func aPipelineRunsItsCommandsInOrderWithAnOutcomeEach(engine: Engine) async throws {
        try await withConnection(engine: engine) { server, connection in
            let large = [UInt8](repeating: 120, count: 3 << 20)
            let words: [[String]] = [["SET", "n", "1"], ["INCR", "n"], ["LPUSH", "n", "x"], ["MULTI"], ["INCR", "n"], ["GET", "n"], ["EXEC"]]
            var commands = words.map { $0.map { Array($0.utf8) } }
            commands.insert([Array("SET".utf8), Array("large".utf8), large], at: 2)
            commands.append([Array("STRLEN".utf8), Array("large".utf8)])
            let results = await connection.pipeline(commands, timeout: nil)
            #expect(results.count == commands.count)
            func reply(_ index: Int) -> RedisReply? { try? results[index].get() }
            #expect(reply(0) == .status("OK") && reply(1) == .integer(2) && reply(2) == .status("OK"))
            if case .failure(let error as RedisError) = results[3] { #expect(error.serverErrorPrefix == "WRONGTYPE") } else { Issue.record("LPUSH on a string: \(results[3])") }
            #expect(reply(4) == .status("OK") && reply(5) == .status("QUEUED") && reply(6) == .status("QUEUED"))
            #expect(reply(7) == .array([.integer(3), .bulkString(Array("3".utf8))]))
            #expect(reply(8) == .integer(Int64(large.count)))
            // Behind a blocking read: they run once it returns.
            let writer = try await RedisConnection.connect(server.configuration)
            let appended = Task {
                try await Task.sleep(for: .milliseconds(300))
                return try await writer.send("XADD", "log", "5-0", "f", "v")
            }
            let blocked = await connection.pipeline([["XREAD", "BLOCK", "5000", "STREAMS", "log", "0-0"], ["INCR", "n"]].map { $0.map { Array($0.utf8) } }, timeout: .seconds(10))
            #expect(try await appended.value == .bulkString(Array("5-0".utf8)))
            #expect((try? blocked[0].get())?.array?.count == 1, "\(blocked[0])")
            #expect((try? blocked[1].get()) == .integer(4))
            await writer.close()
        }
    }

    @Test(arguments: Engine.allCases)
    func binaryValuesWithNulBytesRoundTrip(engine: Engine) async throws {
        try await withConnection(engine: engine) { _, connection in
            let key: [UInt8] = [0, 255, 13, 10, 0, 36]
            let value: [UInt8] = (0..<256).map { UInt8($0) } + [0, 0, 13, 10, 42, 36, 0]
            try await connection.send(command: ["SET", key, value])
            #expect(try await connection.send(command: ["GET", key]) == .bulkString(value))
            #expect(try await connection.send(command: ["STRLEN", key]) == .integer(Int64(value.count)))
        }
    }

    @Test(arguments: Engine.allCases)
    func tenMegabyteValue(engine: Engine) async throws {
        try await withConnection(engine: engine) { _, connection in
            var value = [UInt8](repeating: 0, count: 10 * 1024 * 1024)
            for index in stride(from: 0, to: value.count, by: 4093) { value[index] = UInt8(truncatingIfNeeded: index) }
            try await connection.send(command: ["SET", "big", value])
            // Small requests pipelined behind the big one still get their own replies.
            async let small = connection.send("PING")
            let reply = try await connection.send("GET", "big")
            #expect(try await small == .status("PONG"))
            #expect(reply.bytes?.count == value.count)
            #expect(reply == .bulkString(value))
        }
    }

    @Test(arguments: Engine.allCases)
    func thousandConcurrentRequestsEachGetTheirOwnReply(engine: Engine) async throws {
        try await withConnection(engine: engine) { _, connection in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<1_000 {
                    group.addTask {
                        let key = "key:\(index)"
                        try await connection.send("SET", key, "value-\(index)")
                        let reply = try await connection.send("GET", key)
                        #expect(reply.string == "value-\(index)")
                        let echoed = try await connection.send("ECHO", String(repeating: "e", count: index % 50) + "\(index)")
                        #expect(echoed.string == String(repeating: "e", count: index % 50) + "\(index)")
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await connection.send("DBSIZE") == .integer(1_000))
        }
    }

    /// With pipelining, a request queued behind a blocking one is already on the wire
    /// when the connection dies (outcome unknown); without it, it has not been sent and
    /// runs after the reconnect.
    @Test(arguments: [true, false])
    func pipeliningDecidesWhetherQueuedRequestsAreOnTheWire(pipelining: Bool) async throws {
        try await withConnection(configure: { $0.pipelining = pipelining }) { server, connection in
            let admin = try await RedisConnection.connect(server.configuration)
            let id = try await connection.send("CLIENT", "ID").int ?? -1
            let blocked = Task { await redisError { try await connection.send(command: ["BLPOP", "never", 30], timeout: .seconds(60)) } }
            #expect(try await eventually { (try await admin.send("INFO", "clients").string ?? "").contains("blocked_clients:1") })
            let queued = Task { try await connection.send("INCR", "queued") }
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await admin.send("CLIENT", "KILL", "ID", id) == .integer(1))
            #expect(await blocked.value?.code == .outcomeUnknown)
            if pipelining {
                await #expect(throws: RedisError.self) { try await queued.value }
                #expect(try await admin.send("GET", "queued") == .null)
            } else {
                #expect(try await queued.value == .integer(1))
            }
            await admin.close()
        }
    }

    @Test func cancellingAQueuedRequestWithdrawsIt() async throws {
        try await withConnection(configure: { $0.pipelining = false }) { server, connection in
            let admin = try await RedisConnection.connect(server.configuration)
            let blocking = Task { try await connection.send(command: ["BLPOP", "list", "30"], timeout: .seconds(60)) }
            #expect(try await eventually { (try await admin.send("INFO", "clients").string ?? "").contains("blocked_clients:1") })
            let queued = Task { try await connection.send("INCR", "withdrawn") }
            let kept = Task { try await connection.send("INCR", "kept") }
            try await Task.sleep(for: .milliseconds(50))
            queued.cancel()
            await #expect(throws: CancellationError.self) { try await queued.value }
            try await admin.send("RPUSH", "list", "x")
            #expect(try await blocking.value == .array([.bulkString(Array("list".utf8)), .bulkString(Array("x".utf8))]))
            #expect(try await kept.value == .integer(1))
            #expect(try await admin.send("EXISTS", "withdrawn") == .integer(0))
            // A task cancelled before it sends never reaches the server either.
            let early = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await connection.send("INCR", "withdrawn")
            }
            await #expect(throws: CancellationError.self) { try await early.value }
            #expect(try await admin.send("EXISTS", "withdrawn") == .integer(0))
            await admin.close()
        }
    }

    @Test func pipeliningOffStillServesConcurrentCallers() async throws {
        try await withConnection(configure: { $0.pipelining = false }) { _, connection in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<200 {
                    group.addTask {
                        let reply = try await connection.send("INCR", "counter")
                        #expect(reply.int != nil)
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await connection.send("GET", "counter").int == 200)
        }
    }

    @Test func selectsTheDatabaseFromTheURL() async throws {
        try await RedisServer.withServer { server in
            guard case .unixSocket(let path) = server.endpoint else { return }
            let three = try await RedisConnection.connect(url: "unix://\(path)?db=3")
            try await three.send("SET", "where", "db3")
            let zero = try await RedisConnection.connect(url: "unix://\(path)")
            #expect(try await zero.send("GET", "where") == .null)
            #expect(try await zero.send("SELECT", 3) == .status("OK"))
            #expect(try await zero.send("GET", "where").string == "db3")
            let error = await redisError { _ = try await RedisConnection.connect(url: "unix://\(path)?db=99") }
            #expect(error?.code == .invalidURL)
            #expect(error?.message.contains("database 99") == true)
            await three.close()
            await zero.close()
        }
    }

    @Test(arguments: Engine.allCases)
    func tcpConnectionWithKeepAlive(engine: Engine) async throws {
        try await withConnection(.init(transport: .tcp())) { server, connection in
            guard case .tcp(_, let port) = server.endpoint else { Issue.record("not tcp"); return }
            let viaURL = try await engine.connect(url: "redis://127.0.0.1:\(port)/2")
            #expect(try await viaURL.send("PING") == .status("PONG"))
            #expect(viaURL.engine.keepAliveEnabled() == true)
            var withoutKeepAlive = viaURL.configuration
            withoutKeepAlive.tcpKeepAlive = false
            let plain = try await engine.connect(withoutKeepAlive)
            #expect(plain.engine.keepAliveEnabled() == false)
            await plain.close()
            let list = try await connection.send("CLIENT", "LIST").string ?? ""
            #expect(list.contains("db=2"))
            await viaURL.close()
        }
    }

    @Test(arguments: Engine.allCases)
    func connectionRefusedNamesTheAddress(engine: Engine) async throws {
        let error = await redisError { _ = try await engine.connect(url: "redis://127.0.0.1:1") }
        #expect(error?.code == .connectionRefused)
        #expect(error?.message.contains("127.0.0.1:1") == true)
        let missing = await redisError { _ = try await engine.connect(url: "unix:///nonexistent/redis.sock") }
        #expect(missing?.code == .connectionRefused)
    }

    @Test(arguments: Engine.allCases)
    func connectTimeoutCoversAServerThatNeverAnswers(engine: Engine) async throws {
        // A loopback listener nobody reads from: TCP connects, but PING gets no reply.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ready = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 8) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        #expect(ready)
        var configuration = RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: Int(UInt16(bigEndian: address.sin_port))))
        configuration.connectTimeout = .milliseconds(300)
        let clock = ContinuousClock()
        let start = clock.now
        let error = await redisError { _ = try await engine.connect(configuration) }
        #expect(error?.code == .timeout)
        #expect(error?.message.contains("PING") == true, "\(String(describing: error))")
        // Without the timeout it would wait forever; the bound leaves room for a test
        // run whose other tests (12 MB values, in a debug build) keep Swift's pool busy.
        #expect(clock.now - start < .seconds(15))
    }

    @Test(arguments: Engine.allCases)
    func commandTimeoutFailsTheRequestAndTheConnectionRecovers(engine: Engine) async throws {
        // 1 s: the default also bounds the reconnection and the PING after the timeout,
        // which a loaded machine can delay past a shorter one.
        try await withConnection(engine: engine, configure: { $0.commandTimeout = .seconds(1) }) { _, connection throws in
            let clock = ContinuousClock()
            let start = clock.now
            let error = await redisError { try await connection.send("BLPOP", "never", 10) }
            #expect(error?.code == .timeout)
            #expect(clock.now - start < .seconds(6), "a 1 s timeout fired after \(clock.now - start)")
            // A per-request timeout overrides the default.
            #expect(try await connection.send(command: ["BLPOP", "never", "0.3"], timeout: .seconds(2)) == .null)
            #expect(try await connection.send("PING") == .status("PONG"))
        }
    }

    /// An idle connection's thread sleeps until the configured command timeout (30 s
    /// here) and a caller writes its command itself: a shorter timeout of one request
    /// must still wake the thread in time.
    @Test(arguments: Engine.allCases)
    func aShortRequestTimeoutOnAnIdleConnectionFiresOnTime(engine: Engine) async throws {
        try await withConnection(engine: engine, configure: { $0.commandTimeout = .seconds(30) }) { _, connection throws in
            #expect(try await connection.send("PING") == .status("PONG"))
            try await Task.sleep(for: .milliseconds(100))
            let clock = ContinuousClock()
            let start = clock.now
            let error = await redisError { try await connection.send(command: ["BLPOP", "never", "0"], timeout: .milliseconds(300)) }
            #expect(error?.code == .timeout)
            #expect(clock.now - start < .seconds(5))
            #expect(try await connection.send("PING") == .status("PONG"))
        }
    }

    /// Commands larger than the socket takes at once, written while the connection is
    /// idle (the caller writes what the socket takes, the thread the rest) and between
    /// small ones from other tasks: every byte arrives, in order, and every reply goes to
    /// its request.
    @Test(arguments: Engine.allCases)
    func commandsLargerThanTheSocketBufferArriveWholeBetweenSmallOnes(engine: Engine) async throws {
        try await withConnection(engine: engine) { _, connection throws in
            // 12 MiB: a pattern of 1 MiB (prime-length runs, so no two MiB are alike)
            // repeated with a different byte added each time, and three variants, all
            // built by whole-array copies (a closure per byte costs seconds of a debug
            // build's CPU, which the test run's other tests wait for).
            let (big, variants) = Self.largeValues()
            try await Task.sleep(for: .milliseconds(50))
            #expect(try await connection.send(["SET", "big"].map { Array($0.utf8) } + [big]) == .status("OK"))
            #expect(try await connection.send(["GET", "big"].map { Array($0.utf8) }).bytes == big)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for round in 0..<3 {
                    group.addTask {
                        let value = variants[round]
                        let reply = try await connection.send(["SET", "big\(round)"].map { Array($0.utf8) } + [value])
                        #expect(reply == .status("OK"))
                    }
                    for _ in 0..<100 { group.addTask { _ = try await connection.send("INCR", "n") } }
                }
                try await group.waitForAll()
            }
            #expect(try await connection.send("GET", "n").int == 300)
            for round in 0..<3 {
                #expect(try await connection.send(["GET", "big\(round)"].map { Array($0.utf8) }).bytes == variants[round])
            }
        }
    }

    /// A 12 MiB value and three others like it: runs of a prime length (4093 bytes,
    /// a different run for each value) repeated, each MiB starting at another place in
    /// the run, so that no two MiB, and no two neighbouring chunks, are alike.
    static func largeValues() -> (value: [UInt8], variants: [[UInt8]]) {
        let megabyte = 1 << 20
        func build(_ seed: Int) -> [UInt8] {
            var run = [UInt8](repeating: 0, count: 4093)
            for index in run.indices { run[index] = UInt8(truncatingIfNeeded: index &* 31 &+ index >> 5 &+ seed) }
            // Whole-array copies only: a closure per byte costs seconds of a debug
            // build's CPU, which the test run's other tests wait for.
            var value: [UInt8] = []
            value.reserveCapacity(12 * megabyte + run.count)
            for block in 0..<12 {
                let start = block &* 977 % run.count
                var filled = 0
                value.append(contentsOf: run[start...])
                filled += run.count - start
                while filled < megabyte {
                    let take = min(run.count, megabyte - filled)
                    value.append(contentsOf: run[..<take])
                    filled += take
                }
            }
            return value
        }
        return (build(0), [build(1), build(2), build(3)])
    }

    @Test(arguments: Engine.allCases)
    func closeFinishesQueuedRequestsThenRefusesNewOnes(engine: Engine) async throws {
        try await RedisServer.withServer { server in
            let connection = try await engine.connect(server.configuration)
            // A slow request keeps the others queued while close() is called. They are
            // queued before it for certain (the callback form queues before it returns;
            // tasks could start after the close on a busy machine, and be refused).
            let (replies, reply) = AsyncStream<Result<RedisReply, any Error>>.makeStream()
            let record: @Sendable (Result<RedisReply, any Error>) -> Void = { reply.yield($0) }
            connection.send([Array("BLPOP".utf8), Array("never".utf8), Array("0.3".utf8)], timeout: nil, completion: record)
            for _ in 0..<50 { connection.send([Array("INCR".utf8), Array("n".utf8)], timeout: nil, completion: record) }
            await connection.close()
            var results: [RedisReply] = []
            for await result in replies {
                results.append(try result.get())
                if results.count == 51 { break }
            }
            #expect(results.first == .null)
            #expect(results.dropFirst().compactMap(\.int).sorted() == Array(1...50))
            let error = await redisError { try await connection.send("PING") }
            #expect(error?.code == .connectionClosed)
        }
    }

    @Test func poolSpreadsRequestsOverItsConnections() async throws {
        try await RedisServer.withServer { server in
            let pool = try await RedisConnectionPool.connect(server.configuration, size: 3)
            var ids = Set<Int64>()
            for _ in 0..<9 { ids.insert(try await pool.send("CLIENT", "ID").int ?? -1) }
            #expect(ids.count == 3)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<300 { group.addTask { try await pool.send("INCR", "n") } }
                try await group.waitForAll()
            }
            #expect(try await pool.send("GET", "n").int == 300)
            await pool.close()
            let error = await redisError { _ = try await RedisConnectionPool.connect(server.configuration, size: 0) }
            #expect(error?.code == .invalidArgument)
        }
    }
}
