@testable import Coordination
import Foundation
import Testing

@Suite struct NotificationTests {
    @Test func neededFlagsAreMergedIntoExistingOnes() {
        #expect(Set(KeyspaceNotifications.merged("")) == Set("Ktx"))
        #expect(Set(KeyspaceNotifications.merged("Eg")) == Set("EgKtx"))
        #expect(Set(KeyspaceNotifications.merged("KEA")) == Set("KEA"))
        #expect(Set(KeyspaceNotifications.merged("Ex")) == Set("ExKt"))
    }

    @Test func aWatchTurnsOnNotificationsKeepingTheServersFlags() async throws {
        try await RedisServer.withServer(.init(keyspaceEvents: "Eg")) { server in
            let connection = try await RedisConnection.connect(server.configuration)
            let store = CoordinationClient(redis: connection)
            let start = try await store.get("n").header.revision + 1
            let stream = store.watch("n", options: WatchOptions(startRevision: start))
            _ = try await store.put("n", "1")
            #expect(try await collect(stream, events: 1).flatMap(\.events).first?.kv.valueString == "1")
            let flags = try await connection.send("CONFIG", "GET", "notify-keyspace-events").array?.last?.string ?? ""
            #expect(Set(flags).isSuperset(of: Set("EgKtx")), "flags are \(flags)")
            #expect(store.watchHub.usesNotifications)
            await store.close()
            await connection.close()
        }
    }

    @Test func withoutCONFIGTheWatchFallsBackToBlockingReads() async throws {
        let user = RedisServer.ACLUser(name: "app", password: "pw", rules: "~* &* +@all -config")
        try await RedisServer.withServer(.init(aclUsers: [user])) { server in
            var configuration = server.configuration
            configuration.username = "app"
            configuration.password = "pw"
            let connection = try await RedisConnection.connect(configuration)
            let store = CoordinationClient(redis: connection)
            let start = try await store.get("n").header.revision + 1
            let stream = store.watch("n", options: WatchOptions(startRevision: start))
            _ = try await store.put("n", "1")
            _ = try await store.put("n", "2")
            #expect(try await collect(stream, events: 2).flatMap(\.events).map(\.kv.valueString) == ["1", "2"])
            #expect(!store.watchHub.usesNotifications)
            let admin = try await RedisConnection.connect(server.configuration)
            #expect(try await admin.send("CONFIG", "GET", "notify-keyspace-events").array?.last?.string == "")
            await admin.close()
            await store.close()
            await connection.close()
        }
    }
}
