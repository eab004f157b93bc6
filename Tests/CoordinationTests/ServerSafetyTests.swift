import Coordination
import Foundation
import Testing

@Suite struct ServerSafetyTests {
    @Test func anEvictingMaxmemoryPolicyIsRefusedUnlessAccepted() async throws {
        try await RedisServer.withServer(.init(settings: ["maxmemory-policy": "allkeys-lru"])) { server in
            let error = await coordinationError { _ = try await CoordinationClient.connect(url: server.url) }
            #expect(error?.code == .unsafeConfiguration)
            #expect(error?.message.contains("maxmemory-policy noeviction") == true)
            let accepted = try await CoordinationClient.connect(url: server.url, allowEvictingPolicy: true)
            #expect(try await accepted.status(allowEvictingPolicy: true).warnings.contains { $0.contains("allkeys-lru") })
            await accepted.close()
        }
    }

    @Test func statusReportsTheStoreAndWarnsWhenPersistenceIsOff() async throws {
        try await RedisServer.withServer { server in
            let store = try await CoordinationClient.connect(url: server.url)
            _ = try await store.put("a", "1")
            let status = try await store.status()
            #expect(status.revision == 2 && status.compactRevision == 0)
            #expect(status.redisVersion.hasPrefix("7") || status.redisVersion.hasPrefix("6"))
            #expect(status.maxmemoryPolicy == "noeviction")
            #expect(status.warnings.contains { $0.contains("persistence is off") })
            await store.close()
        }
        try await RedisServer.withServer(.init(appendOnly: true, appendFsync: "always")) { server in
            let store = try await CoordinationClient.connect(url: server.url)
            let status = try await store.status()
            #expect(status.warnings.isEmpty, "\(status.warnings)")
            #expect(status.appendFsync == "always" && status.connectedReplicas == 0)
            await store.close()
        }
        try await RedisServer.withServer(.init(appendOnly: true, appendFsync: "everysec")) { server in
            let store = try await CoordinationClient.connect(url: server.url)
            #expect(try await store.status().warnings.contains { $0.contains("appendfsync is everysec") })
            await store.close()
        }
    }

    @Test func aUserWithoutCONFIGStillWorksAndAMissingPermissionNamesTheCommand() async throws {
        let users = [RedisServer.ACLUser(name: "noconfig", password: "pw", rules: "~* &* +@all -config"),
                     RedisServer.ACLUser(name: "noscripts", password: "pw", rules: "~* &* +@all -evalsha -eval -script")]
        try await RedisServer.withServer(.init(aclUsers: users)) { server in
            guard case .unixSocket(let path) = server.endpoint else { return }
            let limited = try await CoordinationClient.connect(url: "unix://\(path)?user=noconfig&password=pw")
            let status = try await limited.status()
            #expect(status.keyspaceEvents == nil && status.rdbSnapshots == nil)
            #expect(try await limited.put("k", "v").header.revision == 2)
            await limited.close()
            do {
                _ = try await CoordinationClient.connect(url: "unix://\(path)?user=noscripts&password=pw")
                Issue.record("a user without EVALSHA connected")
            } catch let error as RedisError {
                #expect(error.code == .noPermission)
                #expect(error.message.lowercased().contains("evalsha"), "\(error)")
            }
            let wrong = await redisErrorCode { _ = try await CoordinationClient.connect(url: "unix://\(path)?user=noconfig&password=bad") }
            #expect(wrong == .authenticationFailed)
        }
    }
}

/// The RedisError `body` throws; nil when it succeeds or throws something else.
func redisError(_ body: () async throws -> Void) async -> RedisError? {
    do { try await body(); return nil } catch let error as RedisError { return error } catch { return nil }
}

func redisErrorCode(_ body: () async throws -> Void) async -> RedisError.Code? {
    await redisError(body)?.code
}
