import Coordination
import Foundation
@testable import RedisClient
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

    /// etcd's calls that have no counterpart in front of Redis (a snapshot, membership
    /// changes, the writes of etcd's own users and roles) fail UNIMPLEMENTED, through
    /// etcdctl and the gateway alike, saying what to do instead; nothing is written.
    @Test func etcdsCallsWithoutACounterpartFailSayingWhatToDoInstead() async throws {
        try await withProxy { proxy in
            let snapshotFile = FileManager.default.temporaryDirectory.appendingPathComponent("snapshot-\(UUID().uuidString).db").path
            defer { unlink(snapshotFile); unlink(snapshotFile + ".part") }
            let cases: [(arguments: [String], advice: String)] = [
                (["snapshot", "save", snapshotFile], "back it up with Redis's own persistence"),
                (["member", "add", "second", "--peer-urls", "http://127.0.0.1:1"], "run more coordproxy processes in front of the same Redis"),
                (["member", "remove", "1"], "run more coordproxy processes in front of the same Redis"),
                (["user", "add", "bob:secret"], "Redis's AUTH and ACLs guard the data"),
                (["role", "add", "reader"], "Redis's AUTH and ACLs guard the data"),
                (["role", "grant-permission", "reader", "read", "k"], "Redis's AUTH and ACLs guard the data"),
            ]
            for (arguments, advice) in cases {
                let result = try await etcdctl(arguments, endpoint: proxy.endpoint)
                #expect(result.status != 0, "etcdctl \(arguments) succeeded: \(result.output)")
                #expect(result.error.contains("code = Unimplemented") && result.error.contains(advice), "etcdctl \(arguments): \(result.error)")
            }
            #expect(!FileManager.default.fileExists(atPath: snapshotFile), "a snapshot file was left behind")
            let users = try await etcdctl(["user", "list"], endpoint: proxy.endpoint)
            #expect(users.status == 0 && users.output.isEmpty, "\(users)")
            // The gateway: etcd 3.4's paths of those calls, 501 with the same advice.
            guard let python = ChildProcess.locate("python3") else { throw RedisError(.serverNotFound, "python3 was not found on PATH") }
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Python/gateway_client.py").path
            let advice = ["/v3/maintenance/snapshot": "back it up with Redis's own persistence",
                          "/v3/cluster/member/add": "run more coordproxy processes in front of the same Redis",
                          "/v3/auth/user/add": "Redis's AUTH and ACLs guard the data",
                          "/v3/auth/role/grant": "Redis's AUTH and ACLs guard the data"]
            let paths = advice.keys.sorted()
            let input = paths.map { "{\"path\": \"\($0)\", \"body\": {}}" }.joined(separator: "\n") + "\n"
            let answers = try await run(python, [script, proxy.gateway], environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], input: input)
            let lines = answers.output.split(separator: "\n").map(String.init)
            #expect(lines.count == paths.count, "\(answers)")
            for (path, line) in zip(paths, lines) {
                let answer = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                let body = answer["body"] as? [String: Any]
                #expect(answer["status"] as? Int == 501, "\(path): \(line)")
                #expect(body?["code"] as? Int == 12 && (body?["message"] as? String ?? "").contains(advice[path]!), "\(path): \(line)")
            }
            // A path etcd does not have stays 404 Not Found, as etcd's gateway answers it.
            let unknown = try await run(python, [script, proxy.gateway], environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                                        input: "{\"path\": \"/v3/auth/user/rename\", \"body\": {}}\n")
            #expect(unknown.output.contains("\"status\": 404"), "\(unknown)")
        }
    }

    /// `etcdctl endpoint hashkv`: the hash of a revision is the same from every reader
    /// of the store, never changes once the revision is past (until a compaction), is
    /// the same for two stores with one history and differs when one value does; its
    /// errors and its JSON are etcd's.
    @Test func endpointHashKVIsOneHistorysHashAndAnswersAsEtcd() async throws {
        try await ReferenceEtcd.withServer { etcd in
            try await withProxy { proxy in
                // Revisions 2 to 6 on both, and on two more stores (namespaces) of the
                // proxy's Redis: one the same, one with another value at revision 3.
                let same = try await CoordinationClient.connect(url: proxy.redis.url, namespace: "hash-same")
                let other = try await CoordinationClient.connect(url: proxy.redis.url, namespace: "hash-other")
                let marked = try await CoordinationClient.connect(url: proxy.redis.url, namespace: "hash-marked")
                defer { Task { await same.close(); await other.close(); await marked.close() } }
                let history: [[String]] = [["put", "a", "1"], ["put", "b", "2"], ["put", "a", "3"], ["del", "b"], ["put", "c", "4"]]
                for (index, step) in history.enumerated() {
                    for endpoint in [etcd.endpoint, proxy.endpoint] {
                        let done = try await etcdctl(step, endpoint: endpoint)
                        #expect(done.status == 0, "\(step): \(done)")
                    }
                    if step[0] == "put" {
                        _ = try await same.put(step[1], step[2])
                        _ = try await marked.put(step[1], step[2])
                        _ = try await other.put(step[1], index == 1 ? "two" : step[2])
                    } else {
                        _ = try await same.delete(step[1])
                        _ = try await marked.delete(step[1])
                        _ = try await other.delete(step[1])
                    }
                }
                func hash(_ arguments: [String], _ endpoint: String) async throws -> (hash: UInt32?, output: ProgramOutput) {
                    let answer = try await etcdctl(["endpoint", "hashkv", "-w", "json"] + arguments, endpoint: endpoint)
                    let entries = try? JSONSerialization.jsonObject(with: Data(answer.output.utf8)) as? [[String: Any]]
                    let hashed = entries?.first?["HashKV"] as? [String: Any]
                    return ((hashed?["hash"] as? NSNumber)?.uint32Value, answer)
                }
                // The JSON's fields, a never compacted store's compact revision -1, as etcd's.
                for endpoint in [etcd.endpoint, proxy.endpoint] {
                    let answer = try await etcdctl(["endpoint", "hashkv", "-w", "json"], endpoint: endpoint)
                    let entries = try #require(try JSONSerialization.jsonObject(with: Data(answer.output.utf8)) as? [[String: Any]], "\(answer)")
                    let hashed = try #require(entries.first?["HashKV"] as? [String: Any])
                    #expect(Set(hashed.keys) == ["header", "hash", "compact_revision"], "\(endpoint): \(hashed)")
                    #expect(hashed["compact_revision"] as? Int == -1)
                    #expect((hashed["header"] as? [String: Any])?["revision"] as? Int == 6)
                }
                let atHead = try await hash([], proxy.endpoint)
                let atFour = try #require(try await hash(["--rev", "4"], proxy.endpoint).hash)
                #expect(atHead.hash != nil && atHead.hash != atFour)
                #expect(try await same.hashKV(revision: 4).hash == atFour, "another store with the same history hashes alike")
                #expect(try await same.hashKV().hash == atHead.hash)
                #expect(try await other.hashKV(revision: 4).hash != atFour, "a store with another value at revision 3 hashes alike")
                let otherAtTwo = try await other.hashKV(revision: 2).hash
                #expect(try await same.hashKV(revision: 2).hash == otherAtTwo)
                // Later writes change the head's hash, not revision 4's.
                _ = try await etcdctl(["put", "d", "5"], endpoint: proxy.endpoint)
                #expect(try await hash(["--rev", "4"], proxy.endpoint).hash == atFour)
                #expect(try await hash([], proxy.endpoint).hash != atHead.hash)

                // A future revision, then compacted ones: etcd's errors and exit codes.
                func expectSameRefusal(_ arguments: [String]) async throws {
                    let fromEtcd = try await hash(arguments, etcd.endpoint).output
                    let fromProxy = try await hash(arguments, proxy.endpoint).output
                    #expect(fromEtcd.status != 0 && fromProxy.status == fromEtcd.status, "\(arguments): etcd \(fromEtcd), coordproxy \(fromProxy)")
                    let lastLine = { (output: ProgramOutput) in output.error.split(separator: "\n").last.map(String.init) ?? "" }
                    #expect(lastLine(fromProxy) == lastLine(fromEtcd), "\(arguments)")
                }
                try await expectSameRefusal(["--rev", "99"])
                for endpoint in [etcd.endpoint, proxy.endpoint] {
                    #expect(try await etcdctl(["compact", "4"], endpoint: endpoint).status == 0)
                }
                try await expectSameRefusal(["--rev", "4"])
                try await expectSameRefusal(["--rev", "3"])
                // Past the compaction, stores with one history still hash alike.
                _ = try await same.compact(4)
                let compacted = try await hash(["--rev", "5"], proxy.endpoint)
                let sameAtFive = try await same.hashKV(revision: 5).hash
                #expect(compacted.hash != nil && compacted.hash == sameAtFive, "\(compacted.output)")
                // A compaction that has recorded its revision but removed nothing yet (its
                // first step) hashes as a finished one: superseded versions below it do
                // not count.
                let redis = try await RedisConnection.connect(proxy.redis.configuration)
                defer { Task { await redis.close() } }
                try await redis.send("SET", "{hash-marked}:compact", "4")
                #expect(try await redis.send("HLEN", "{hash-marked}:hist").int == (try await redis.send("HLEN", "{hash-same}:hist").int ?? 0) + 1)
                #expect(try await marked.hashKV(revision: 5).hash == sameAtFive)
                let entries = try JSONSerialization.jsonObject(with: Data(compacted.output.output.utf8)) as? [[String: Any]]
                #expect((entries?.first?["HashKV"] as? [String: Any])?["compact_revision"] as? Int == 4)
            }
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
            // The observer is a process of its own, which a busy machine may start late: it
            // must have seen the first leader (the current one when it began) before the
            // first resigns, or it would rightly begin with the second.
            #expect(await eventually { observer.printed.contains("one") }, "\(observer.printed)")
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
