@testable import Coordination
import Foundation
import Testing

@Suite struct NotificationTests {
    @Test func neededFlagsAreMergedIntoExistingOnes() {
        #expect(Set(KeyspaceNotifications.merged("")) == Set("Kx"))
        #expect(Set(KeyspaceNotifications.merged("Eg")) == Set("EgKx"))
        #expect(Set(KeyspaceNotifications.merged("KEA")) == Set("KEA"))
        #expect(Set(KeyspaceNotifications.merged("Ex")) == Set("ExK"))
    }

    @Test func theLeaseReaperTurnsOnExpiryNotificationsKeepingTheServersFlags() async throws {
        try await RedisServer.withServer(.init(keyspaceEvents: "Eg")) { server in
            let store = try await CoordinationClient.connect(server.configuration)
            let reaper = Task { try await store.run() }
            defer { reaper.cancel() }
            let admin = try await RedisConnection.connect(server.configuration)
            var flags = ""
            for _ in 0..<500 {
                flags = try await admin.send("CONFIG", "GET", "notify-keyspace-events").array?.last?.string ?? ""
                if Set(flags).isSuperset(of: Set("EgKx")) { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(Set(flags).isSuperset(of: Set("EgKx")), "flags are \(flags)")
            reaper.cancel()
            await admin.close()
            await store.close()
        }
    }

    @Test func aWatchNeedsNeitherNotificationsNorCONFIG() async throws {
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
            let admin = try await RedisConnection.connect(server.configuration)
            #expect(try await admin.send("CONFIG", "GET", "notify-keyspace-events").array?.last?.string == "")
            await admin.close()
            await store.close()
            await connection.close()
        }
    }
}
