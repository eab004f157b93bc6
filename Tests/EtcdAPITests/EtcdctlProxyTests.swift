import Coordination
import Foundation
import Testing

/// etcdctl 3.4 against coordproxy: the commands whose output cannot be compared
/// with etcd's byte for byte (IDs, timings, processes), checked for their states.
@Suite struct EtcdctlProxyTests {
    @Test func endpointHealthStatusAndMemberListAnswer() async throws {
        try await withProxy { proxy in
            let health = try await etcdctl(["endpoint", "health"], endpoint: proxy.endpoint)
            #expect(health.status == 0, "\(health.error)")
            #expect(health.error.contains("is healthy") || health.output.contains("is healthy"), "\(health)")
            _ = try await etcdctl(["put", "k", "v"], endpoint: proxy.endpoint)
            let status = try await etcdctl(["endpoint", "status", "-w", "json"], endpoint: proxy.endpoint)
            #expect(status.status == 0, "\(status.error)")
            let entries = try #require(try JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [[String: Any]])
            let reported = try #require(entries.first?["Status"] as? [String: Any])
            #expect(reported["version"] as? String == "3.4.0")
            #expect((reported["header"] as? [String: Any])?["revision"] as? Int == 2)
            #expect(reported["leader"] != nil)
            let members = try await etcdctl(["member", "list"], endpoint: proxy.endpoint)
            #expect(members.status == 0, "\(members.error)")
            #expect(members.output.contains(", started, default, "), "\(members.output)")
            #expect(members.output.contains(proxy.endpoint), "\(members.output)")
            let alarms = try await etcdctl(["alarm", "list"], endpoint: proxy.endpoint)
            #expect(alarms.status == 0 && alarms.output.isEmpty, "\(alarms)")
            // The one member is the leader already: moving leadership to it succeeds, as on
            // a one-member etcd (the differential test checks any other target's error).
            let memberID = try #require(members.output.split(separator: ",").first.map(String.init))
            let moved = try await etcdctl(["move-leader", memberID], endpoint: proxy.endpoint)
            #expect(moved.status == 0, "\(moved)")
            #expect(moved.output.contains("Leadership transferred from \(memberID) to \(memberID)"), "\(moved)")
        }
    }

    @Test func aLiveWatchSeesEveryPutInOrderAndACompactedStartIsRefused() async throws {
        try await withProxy { proxy in
            let watcher = try Background(etcdctl: ["watch", "--prefix", "live/"], endpoint: proxy.endpoint)
            defer { watcher.signal(SIGKILL) }
            // The watch is in place once the proxy's log reader has a watcher: wait for
            // a put made after the watch started to show up.
            #expect(await eventually {
                _ = try? await proxy.store.put("live/probe", "x")
                return watcher.printed.contains("live/probe")
            })
            for index in 1...20 { _ = try await proxy.store.put("live/\(index)", "v\(index)") }
            let lines = await watcher.waitForLines(0).count
            _ = lines
            #expect(await eventually { watcher.printed.contains("v20") })
            let printed = watcher.printed
            let values = printed.filter { $0.hasPrefix("v") }
            #expect(values == (1...20).map { "v\($0)" })

            // History below the compacted revision is gone: etcdctl reports it as etcd.
            let current = try await proxy.store.currentRevision()
            _ = try await proxy.store.compact(current - 5)
            let compacted = try await etcdctl(["watch", "--prefix", "live/", "--rev", "2"], endpoint: proxy.endpoint, timeout: .seconds(30))
            #expect(compacted.status != 0 || compacted.error.contains("compacted") || compacted.output.contains("compacted"), "\(compacted)")
            #expect((compacted.output + compacted.error).contains("required revision has been compacted"), "\(compacted)")
        }
    }

    @Test func leaseKeepAliveKeepsKeysPastTheTTLAndExpiryRemovesThem() async throws {
        try await withProxy { proxy in
            // TTL 20, so that the etcdctl processes may start slowly on a busy machine; the
            // refreshes show in the remaining TTL, which would otherwise only fall.
            let grant = try await etcdctl(["lease", "grant", "20"], endpoint: proxy.endpoint)
            let lease = try #require(grant.output.split(separator: " ").dropFirst().first.map(String.init), "\(grant)")
            let id = try #require(Int64(lease, radix: 16))
            let keeper = try Background(etcdctl: ["lease", "keep-alive", lease], endpoint: proxy.endpoint)
            defer { keeper.signal(SIGKILL) }
            #expect(await eventually { !keeper.printed.isEmpty }, "no keep-alive answered")
            #expect(keeper.printed.first == "lease \(lease) keepalived with TTL(20)", "\(keeper.printed)")
            let put = try await etcdctl(["put", "held", "v", "--lease=\(lease)"], endpoint: proxy.endpoint)
            #expect(put.status == 0, "\(put)")
            try await Task.sleep(for: .seconds(12))
            // Unrefreshed, at most 8 s of the 20 would be left; etcdctl refreshes every TTL/3.
            let live = try await proxy.store.timeToLive(id)
            #expect(live.ttl >= 10, "remaining TTL \(live.ttl) s: the keep-alives did not refresh the lease")
            #expect(try await proxy.store.get("held").count == 1)
            keeper.signal(SIGKILL)
            _ = await keeper.wait()
            // Nobody refreshes it now: the lease expires and takes the key along.
            #expect(await eventually(timeout: .seconds(60)) { (try? await proxy.store.get("held").count) == 0 })
            let ttl = try await etcdctl(["lease", "timetolive", lease], endpoint: proxy.endpoint)
            #expect(ttl.output.contains("already expired"), "\(ttl)")
        }
    }

    @Test func etcdctlLockExcludesOtherProcessesAndPassesTheKey() async throws {
        try await withProxy { proxy in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lock-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let log = directory.appendingPathComponent("log").path
            // Each holder writes "in", waits a little, writes "out": with mutual exclusion
            // the log alternates in/out.
            let script = "echo in $ETCD_LOCK_KEY >> '\(log)'; sleep 0.2; echo out >> '\(log)'"
            let holders = try (0..<4).map { _ in try Background(etcdctl: ["lock", "jobs", "--", "sh", "-c", script], endpoint: proxy.endpoint) }
            var statuses: [Int32] = []
            for holder in holders { statuses.append(await holder.wait()) }
            #expect(statuses == [0, 0, 0, 0])
            let lines = (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").map(String.init) ?? []
            #expect(lines.count == 8, "\(lines)")
            for (index, line) in lines.enumerated() {
                #expect(line.hasPrefix(index % 2 == 0 ? "in jobs/" : "out"), "overlapping holders: \(lines)")
            }
            #expect(Set(lines.filter { $0.hasPrefix("in") }).count == 4, "holders shared a key: \(lines)")
            #expect(try await proxy.store.get("jobs/", options: .prefix(Array("jobs/".utf8))).count == 0)
        }
    }

    @Test func aLockHolderKilledWithSIGKILLLosesTheLockWhenItsLeaseExpires() async throws {
        try await withProxy { proxy in
            // A TTL long enough that the holder keeps its session on a loaded machine.
            let holder = try Background(etcdctl: ["lock", "--ttl", "8", "jobs"], endpoint: proxy.endpoint)
            defer { holder.signal(SIGKILL) }
            // Without a command, etcdctl prints the lock key and holds on.
            let key = await holder.waitForLines(1).first ?? ""
            #expect(key.hasPrefix("jobs/"), "\(holder.printed)")
            holder.signal(SIGKILL)
            _ = await holder.wait()
            #expect(try await proxy.store.get(key).count == 1)   // nobody unlocked it...
            // ...and nobody refreshes its lease: the key goes with it, and the next locker gets in.
            let next = try await etcdctl(["lock", "--ttl", "10", "jobs", "--", "true"], endpoint: proxy.endpoint, timeout: .seconds(60))
            #expect(next.status == 0, "\(next)")
            #expect(try await proxy.store.get(key).count == 0)
        }
    }

    @Test func etcdctlElectCampaignsAndObserveSeesEachLeaderInOrder() async throws {
        try await withProxy { proxy in
            let observer = try Background(etcdctl: ["elect", "-l", "pick"], endpoint: proxy.endpoint)
            defer { observer.signal(SIGKILL) }
            let first = try Background(etcdctl: ["elect", "pick", "one"], endpoint: proxy.endpoint)
            defer { first.signal(SIGKILL) }
            // Elected: etcdctl prints the leader key and the proposal.
            let elected = await first.waitForLines(2)
            #expect(elected.count >= 2 && elected[0].hasPrefix("pick/") && elected[1] == "one", "\(elected)")
            let second = try Background(etcdctl: ["elect", "pick", "two"], endpoint: proxy.endpoint)
            defer { second.signal(SIGKILL) }
            #expect(await eventually { (try? await proxy.store.get("pick/", options: .prefix(Array("pick/".utf8))).count) == 2 })
            #expect(second.printed.isEmpty, "a second candidate was elected while the first led")
            first.signal(SIGINT)   // etcdctl resigns on interrupt
            _ = await first.wait()
            let next = await second.waitForLines(2)
            #expect(next.count >= 2 && next[1] == "two", "\(next)")
            #expect(await eventually { observer.printed.contains("two") })
            let values = observer.printed.filter { !$0.hasPrefix("pick/") }
            #expect(values == ["one", "two"], "\(observer.printed)")
        }
    }
}

/// Redis going away and coming back, seen through etcdctl.
@Suite struct RedisOutageTests {
    @Test func requestsFailWithUnavailableWhileRedisIsDownAndSucceedOnceItIsBack() async throws {
        try await withProxy { proxy in
            #expect(try await etcdctl(["put", "before", "1"], endpoint: proxy.endpoint).status == 0)
            await proxy.redis.kill()
            // Answered at once with UNAVAILABLE and the reason, not left to time out.
            let refused = try await etcdctl(["--command-timeout", "10s", "put", "during", "1"], endpoint: proxy.endpoint)
            #expect(refused.status != 0)
            #expect(refused.error.contains("code = Unavailable desc = coordproxy: Redis is unavailable")
                    || refused.error.contains("etcdserver: request timed out, possibly due to connection lost"), "\(refused.error)")
            try await proxy.redis.restart()
            // The proxy reconnects by itself; the first request after that succeeds.
            #expect(await eventually(timeout: .seconds(60)) {
                (try? await etcdctl(["--command-timeout", "3s", "put", "after", "1"], endpoint: proxy.endpoint).status) == 0
            })
            let read = try await etcdctl(["get", "after", "--print-value-only"], endpoint: proxy.endpoint)
            #expect(read.output == "1\n", "\(read)")
            let health = try await etcdctl(["endpoint", "health"], endpoint: proxy.endpoint)
            #expect(health.status == 0, "\(health)")
        }
    }
}
