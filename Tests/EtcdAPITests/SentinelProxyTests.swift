import Foundation
@testable import RedisClient
import Testing

/// coordproxy on `redis-sentinel://`: real redis-sentinel processes, a master and a
/// replica on loopback, etcdctl and redis-cli as clients, the master killed with SIGKILL.
@Suite(.serialized) struct SentinelProxyTests {
    @Test func etcdctlAndRedisCliThroughCoordproxyFollowASentinelFailover() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 1, sentinels: 3) { group in
            let respPort = try ChildProcess.freeLoopbackPort()
            let proxy = try await CoordproxyProcess.start(redisURL: group.url, arguments: ["--listen-resp", "127.0.0.1:\(respPort)"])
            defer { proxy.kill() }
            let redisCli = try #require(ChildProcess.locate("redis-cli"))
            func cli(_ arguments: [String]) async throws -> ProgramOutput {
                try await run(redisCli, ["-p", String(respPort)] + arguments, environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(30))
            }
            #expect(try await etcdctl(["put", "k", "before"], endpoint: proxy.endpoint).output == "OK\n")
            #expect(try await cli(["COORD.PUT", "r", "before"]).status == 0)
            #expect(try await cli(["SET", "plain", "before"]).output == "OK\n")
            // On the replica before the kill, so that the failover loses nothing.
            let master = try await RedisConnection.connect(group.servers[0].configuration)
            #expect(try await master.send("WAIT", "1", "5000").int == 1)
            await master.close()

            let killed = try await group.killMaster()
            let started = ContinuousClock.now
            var put = try await etcdctl(["put", "k", "after"], endpoint: proxy.endpoint)
            while put.status != 0 && ContinuousClock.now - started < .seconds(60) {
                try await Task.sleep(for: .milliseconds(100))
                put = try await etcdctl(["put", "k", "after"], endpoint: proxy.endpoint)
            }
            let recovered = ContinuousClock.now - started
            #expect(put.output == "OK\n", "\(put)\n\(proxy.log())")
            // Every sentinel names the new master once the failover is through (one of
            // them asked alone may still name the old one, or be too busy to answer).
            #expect(try await group.waitForFailover(from: killed) !== killed)
            #expect(try await etcdctl(["get", "k"], endpoint: proxy.endpoint).output == "k\nafter\n")
            #expect(try await cli(["COORD.GET", "r"]).output.contains("before"))
            #expect(try await cli(["GET", "plain"]).output == "before\n")
            #expect(try await cli(["SET", "plain", "after"]).output == "OK\n")
            print("coordproxy on redis-sentinel://: etcdctl put served again \(recovered) after kill -9 of the master; COORD.* and pass-through at the new master")
        }
    }
}
