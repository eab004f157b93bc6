import Foundation
import Testing
@testable import RedisClient

@Suite struct RedisServerTests {
    @Test func missingRedisServerIsAClearError() async {
        let error = await redisError { _ = try await RedisServer.start(.init(searchPath: "/nonexistent/bin")) }
        #expect(error?.code == .serverNotFound)
        #expect(error?.message.contains("apt-get install redis-server") == true)
        let explicit = await redisError { _ = try await RedisServer.start(.init(executable: "/nonexistent/redis-server")) }
        #expect(explicit?.code == .serverNotFound)
    }

    @Test func badSettingReportsTheServersLog() async {
        let error = await redisError { _ = try await RedisServer.start(.init(settings: ["no-such-directive": "1"])) }
        #expect(error?.code == .serverStartFailed)
        #expect(error?.message.contains("no-such-directive") == true, "\(String(describing: error))")
    }

    @Test func appliesRequestedSettings() async throws {
        let options = RedisServer.Options(keyspaceEvents: "Kx", appendOnly: true, appendFsync: "always", settings: ["maxmemory-policy": "noeviction"])
        try await withConnection(options) { _, connection throws in
            #expect(try await connection.send("CONFIG", "GET", "notify-keyspace-events") == .array([.bulkString(Array("notify-keyspace-events".utf8)), .bulkString(Array("xK".utf8))]))
            #expect(try await connection.send("CONFIG", "GET", "appendonly").array?.last?.string == "yes")
            #expect(try await connection.send("CONFIG", "GET", "appendfsync").array?.last?.string == "always")
            #expect(try await connection.send("CONFIG", "GET", "maxmemory-policy").array?.last?.string == "noeviction")
        }
    }

    @Test func stopEndsTheProcessAndRemovesItsDirectory() async throws {
        let server = try await RedisServer.start(.init(transport: .tcp()))
        let pid = server.pid
        #expect(pid > 0)
        #expect(FileManager.default.fileExists(atPath: server.directory))
        await server.stop()
        #expect(kill(pid, 0) != 0)
        #expect(!FileManager.default.fileExists(atPath: server.directory))
        #expect(server.pid == 0)
    }
}
