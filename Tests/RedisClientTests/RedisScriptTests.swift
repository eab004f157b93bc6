import Testing
@testable import RedisClient

@Suite struct RedisScriptTests {
    static let script = RedisScript("""
        redis.call('SET', KEYS[1], ARGV[1])
        return redis.call('INCR', KEYS[2])
        """)

    @Test func shaMatchesWhatRedisComputes() async throws {
        try await withConnection { _, connection throws in
            #expect(try await connection.send("SCRIPT", "LOAD", Self.script.source).string == Self.script.sha1)
        }
    }

    @Test func evalshaWorksAfterScriptFlush() async throws {
        try await withConnection { _, connection in
            #expect(try await connection.run(Self.script, keys: ["a", "n"], arguments: ["x"]) == .integer(1))
            try await connection.send("SCRIPT", "FLUSH")
            #expect(try await connection.send("SCRIPT", "EXISTS", Self.script.sha1) == .array([.integer(0)]))
            #expect(try await connection.run(Self.script, keys: ["a", "n"], arguments: ["y"]) == .integer(2))
            #expect(try await connection.send("GET", "a").string == "y")
        }
    }

    @Test func manyConcurrentCallsAfterFlushAllSucceedExactlyOnce() async throws {
        try await withConnection { _, connection in
            try await connection.send("SCRIPT", "FLUSH")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<300 {
                    group.addTask { _ = try await connection.run(Self.script, keys: ["k\(index)", "n"], arguments: ["v"]) }
                }
                try await group.waitForAll()
            }
            #expect(try await connection.send("GET", "n").int == 300)
        }
    }

    @Test func scriptIsReloadedAfterServerRestart() async throws {
        try await withConnection { server, connection in
            #expect(try await connection.run(Self.script, keys: ["a", "n"], arguments: ["x"]) == .integer(1))
            try await server.restart()
            #expect(try await connection.run(Self.script, keys: ["a", "n"], arguments: ["x"]) == .integer(1))
        }
    }

    @Test func scriptErrorsAreServerErrors() async throws {
        try await withConnection { _, connection in
            let failing = RedisScript("return redis.call('INCR', KEYS[1])")
            try await connection.send("SET", "text", "abc")
            let error = await redisError { _ = try await connection.run(failing, keys: ["text"]) }
            #expect(error?.code == .server)
            #expect(error?.message.contains("not an integer") == true)
        }
    }
}
