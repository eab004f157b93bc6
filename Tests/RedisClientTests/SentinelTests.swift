import Foundation
import Synchronization
import Testing
@testable import RedisClient

/// Redis Sentinel: real redis-sentinel processes (`redis-server --sentinel`), a
/// master and a replica on loopback; the master killed with SIGKILL or handed over
/// with SENTINEL FAILOVER.
@Suite(.serialized) struct SentinelTests {
    @Test func sentinelURLsNameTheSentinelsTheMasterAndBothCredentials() throws {
        let configuration = try RedisConfiguration(url: "redis-sentinel://app:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]/cache/2?sentinel_password=spw&sentinel_user=watch")
        #expect(configuration.sentinel == RedisConfiguration.Sentinel(
            endpoints: [.tcp(host: "10.0.0.1", port: 26379), .tcp(host: "10.0.0.2", port: 26380), .tcp(host: "::1", port: 26379)],
            masterName: "cache", username: "watch", password: "spw"))
        #expect(configuration.username == "app")
        #expect(configuration.password == "s@cret")
        #expect(configuration.database == 2)
        #expect(configuration.redactedURL == "redis-sentinel://app:***@10.0.0.1:26379,10.0.0.2:26380,[::1]:26379/cache/2?sentinel_user=watch&sentinel_password=***")
        for (url, reason) in [
            ("redis-sentinel://10.0.0.1", "names the master"),
            ("redis-sentinel://10.0.0.1,/m", "empty sentinel address"),
            ("redis-sentinel://10.0.0.1/m/x", "database 'x'"),
            ("redis-sentinel://10.0.0.1/m?sentinel_pasword=x", "unknown parameter 'sentinel_pasword'"),
        ] {
            #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
            do { _ = try RedisConfiguration(url: url) } catch let error as RedisError {
                #expect(error.message.contains(reason), "\(url): \(error.message)")
            }
        }
        do { _ = try RedisConfiguration(url: "redis-sentinel://10.0.0.1/m?sentinel_password=hidden&x=1") } catch let error as RedisError {
            #expect(!error.message.contains("hidden"), "\(error.message)")
        }
    }

    @Test func aSentinelThatDoesNotKnowTheMasterNameIsAClearError() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 0, sentinels: 1) { group in
            let error = await #expect(throws: RedisError.self) {
                _ = try await RedisConnection.connect(url: "redis-sentinel://\(group.sentinels[0].endpoint)/nosuchmaster")
            }
            #expect(error?.code == .connectionRefused)
            #expect(error?.message.contains("does not monitor a master named 'nosuchmaster'") == true, "\(String(describing: error))")
            let unreachable = await #expect(throws: RedisError.self) {
                var configuration = try RedisConfiguration(url: "redis-sentinel://127.0.0.1:\(try ChildProcess.freeLoopbackPort())/mymaster")
                configuration.connectTimeout = .seconds(1)
                _ = try await RedisConnection.connect(configuration)
            }
            #expect(unreachable?.message.contains("no sentinel named the master 'mymaster'") == true, "\(String(describing: unreachable))")
        }
    }

    /// A sentinel with an older configuration (here one that has seen no failover and
    /// names another server that answers ROLE master, as an old master restarted empty
    /// does) listed first: the connection follows the sentinels whose configuration is
    /// newest (the highest config epoch), not the first answer.
    @Test func theSentinelWithTheNewestConfigurationIsFollowedOverAStaleOneListedFirst() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 1, sentinels: 3) { group in
            let old = try await group.killMaster()
            let new = try await group.waitForFailover(from: old)
            try await RedisServer.withServer(.init(transport: .tcp())) { elsewhere in
                guard case .tcp(let host, let port) = elsewhere.endpoint else { return }
                let settings = RedisServer.SentinelSettings(masterName: group.masterName, masterHost: host, masterPort: port, quorum: 1,
                                                            downAfter: .seconds(60), masterPassword: nil)
                let stale = try await RedisServer.start(RedisServer.Options(transport: .tcp(), sentinel: settings))
                defer { Task { await stale.stop() } }
                let url = "redis-sentinel://\(([stale] + group.sentinels).map { "\($0.endpoint)" }.joined(separator: ","))/\(group.masterName)"
                let connection = try await RedisConnection.connect(url: url)
                defer { Task { await connection.close() } }
                #expect(try await connection.send("SET", "followed", "newest").string == "OK")
                let direct = try await RedisConnection.connect(new.configuration)
                defer { Task { await direct.close() } }
                #expect(try await direct.send("GET", "followed").string == "newest", "the write went to \(elsewhere.endpoint), the stale sentinel's master")
                let strayed = try await RedisConnection.connect(elsewhere.configuration)
                defer { Task { await strayed.close() } }
                #expect(try await strayed.send("EXISTS", "followed").int == 0)
            }
        }
    }

    @Test func aSentinelThatTakesConnectionsButNeverAnswersCostsAGraceNotTheConnectTimeout() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 0, sentinels: 3) { group in
            // Stopped, the first sentinel of the URL still accepts connections (the
            // kernel does) but answers nothing: the others are not made to wait for it.
            let silent = group.sentinels[0]
            kill(silent.pid, SIGSTOP)
            defer { kill(silent.pid, SIGCONT) }
            var configuration = try RedisConfiguration(url: group.url)
            configuration.connectTimeout = .seconds(10)
            let started = ContinuousClock.now
            let connection = try await RedisConnection.connect(configuration)
            let took = ContinuousClock.now - started
            defer { Task { await connection.close() } }
            #expect(try await connection.send("SET", "k", "v").string == "OK")
            #expect(took < .seconds(5), "connecting took \(took): the silent sentinel was waited for up to the connect timeout (10 s)")
        }
    }

    @Test func theMastersAndTheSentinelsPasswordsComeFromTheURL() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 0, sentinels: 1, options: RedisServer.Options(transport: .tcp(), password: "master pw"),
                                                       sentinelPassword: "sentinel pw") { group in
            let connection = try await RedisConnection.connect(url: group.url)
            #expect(try await connection.send("SET", "k", "v").string == "OK")
            await connection.close()
            let withoutSentinelPassword = await #expect(throws: RedisError.self) {
                _ = try await RedisConnection.connect(url: group.url(password: "master pw"))
            }
            #expect(withoutSentinelPassword?.message.contains("no sentinel named the master 'mymaster'") == true
                    && withoutSentinelPassword?.message.contains("requires a password: add ?sentinel_password=") == true, "\(String(describing: withoutSentinelPassword))")
            #expect(withoutSentinelPassword?.code == .authenticationFailed)
            let wrongMasterPassword = await #expect(throws: RedisError.self) {
                _ = try await RedisConnection.connect(url: group.url(password: "wrong", sentinelPassword: "sentinel pw"))
            }
            #expect(wrongMasterPassword?.code == .authenticationFailed, "\(String(describing: wrongMasterPassword))")
            #expect(wrongMasterPassword?.message.contains("wrong") == false)
        }
    }

    /// The port of the server a connection reached.
    static func port(of connection: RedisConnection) async throws -> Int? {
        let reply = try await connection.send("CONFIG", "GET", "port")
        return reply.array?.last?.string.flatMap { Int($0) }
    }

    static func port(_ server: RedisServer) -> Int? {
        if case .tcp(_, let port) = server.endpoint { return port }
        return nil
    }

    /// Runs `operation` until it succeeds (errors while the failover is under way are
    /// expected); returns how long that took.
    static func untilItSucceeds(within limit: Duration = .seconds(60), _ operation: () async throws -> Bool) async throws -> Duration {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < limit {
            if (try? await operation()) == true { return ContinuousClock.now - started }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("did not succeed within \(limit)")
        return limit
    }

    @Test func aConnectionAndASubscriberFollowTheMasterWhenItIsKilledAndWhenItIsHandedOver() async throws {
        try await RedisSentinelGroup.withGroup(replicas: 1, sentinels: 3) { group in
            let configuration = try RedisConfiguration(url: group.url)
            let connection = try await RedisConnection.connect(configuration)
            defer { Task { await connection.close() } }
            let first = group.servers[0]
            #expect(try await Self.port(of: connection) == Self.port(first))
            try await connection.send("SET", "k", "1")
            _ = try await connection.send("WAIT", "1", "5000")

            let subscriber = try await RedisSubscriber.connect(configuration)
            defer { Task { await subscriber.close() } }
            let received = Mutex<[String]>([])
            let (subscribed, subscribing) = AsyncStream.makeStream(of: Void.self)
            let listener = Task {
                try await subscriber.subscribe(channels: ["news"]) { events in
                    subscribing.yield()
                    for try await event in events {
                        if case .message(let message) = event { received.withLock { $0.append(String(decoding: message.payload, as: UTF8.self)) } }
                    }
                }
            }
            defer { listener.cancel() }
            for await _ in subscribed { break }

            // 1. kill -9: the sentinels promote the replica; the connection finds it.
            let killed = try await group.killMaster()
            let recovery = try await Self.untilItSucceeds {
                try await connection.send("SET", "after-kill", "1")
                return true
            }
            let promoted = try await group.master()
            #expect(promoted !== killed)
            #expect(try await Self.port(of: connection) == Self.port(promoted))
            #expect(try await connection.send("GET", "k").string == "1")
            #expect(try await connection.send("ROLE").array?.first?.string == "master")
            // The subscriber re-subscribed at the new master.
            let delivered = try await Self.untilItSucceeds(within: .seconds(30)) {
                try await connection.send("PUBLISH", "news", "after-kill")
                try await Task.sleep(for: .milliseconds(50))
                return received.withLock { $0.contains("after-kill") }
            }
            print("sentinel failover (kill -9 of the master): writes served again \(recovery) after the kill, pub/sub \(delivered) later")

            // 2. The old master comes back (as a replica, rejoin); then a
            // handover with SENTINEL FAILOVER: the old master stays up, so only the
            // +switch-master announcement (or its READONLY answers) moves the connection.
            try await group.rejoin(killed)
            let sentinel = try await RedisConnection.connect(group.sentinels[0].configuration)
            defer { Task { await sentinel.close() } }
            #expect(try await sentinel.send("SENTINEL", "FAILOVER", group.masterName).string == "OK")
            let moved = try await Self.untilItSucceeds {
                try await connection.send("SET", "after-handover", "1")
                return try await Self.port(of: connection) == Self.port(killed)
            }
            #expect(try await connection.send("GET", "after-kill").string == "1")
            let movedPubSub = try await Self.untilItSucceeds(within: .seconds(30)) {
                try await connection.send("PUBLISH", "news", "after-handover")
                try await Task.sleep(for: .milliseconds(50))
                return received.withLock { $0.contains("after-handover") }
            }
            print("sentinel handover (SENTINEL FAILOVER): the connection moved in \(moved), pub/sub \(movedPubSub) later")
        }
    }
}
