import Foundation
@testable import RedisClient
import Testing

/// Redis loses the store's data under coordproxy: etcd's clients see what they see
/// when their history is gone (a compacted-style cancel), never the new history as a
/// continuation of the old one.
@Suite struct StoreResetProxyTests {
    @Test func etcdctlWatchIsCancelledAsCompactedWhenRedisRestartsEmpty() async throws {
        try await withProxy { proxy in
            // Through sh, so that etcdctl's stderr (where it reports the cancel) is read too.
            let etcdctlPath = try #require(ChildProcess.locate("etcdctl"))
            let watch = try Background(executable: "/bin/sh", arguments: ["-c", "exec \(etcdctlPath) --endpoints \(proxy.endpoint) --dial-timeout 20s watch live/ --prefix 2>&1"],
                                       environment: ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"])
            defer { watch.signal(SIGKILL) }
            // Live once it prints a put made after it started (retried until it does).
            let live = await eventually(timeout: .seconds(30)) {
                _ = try? await etcdctl(["put", "live/a", "1"], endpoint: proxy.endpoint)
                return watch.printed.count >= 3
            }
            #expect(live, "the watch never printed a put: \(watch.printed)")
            let before = watch.printed.count
            try await proxy.redis.restart()   // SIGKILL; an empty Redis at the same address
            // The new history reuses revisions; none of it may reach the old watch.
            _ = try? await etcdctl(["put", "live/b", "2"], endpoint: proxy.endpoint)
            let exited = await eventually(timeout: .seconds(60)) { !watch.process.isRunning }
            #expect(exited, "etcdctl watch still runs after the reset: \(watch.printed)")
            let status = exited ? await watch.wait() : 0
            let lines = watch.printed
            #expect(lines.dropFirst(before).contains { $0.contains("required revision has been compacted") },
                    "etcdctl printed \(lines)")
            #expect(!lines.contains("live/b"), "the old watch was given the new history: \(lines)")
            #expect(status != 0, "etcdctl watch exited \(status)")
        }
    }
}
