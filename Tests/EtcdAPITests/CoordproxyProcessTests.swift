import Coordination
import EtcdAPI
import Foundation
import Logging
@testable import RedisClient
import Synchronization
import Testing

/// The coordproxy executable as operators run it: processes on a real Redis, shut
/// down with SIGTERM, several in front of one Redis, scraped for metrics.
@Suite struct CoordproxyProcessTests {
    @Test func sigtermEndsStreamsAndWaitingCallsWithUnavailableExitsZeroAndRevokesNothing() async throws {
        let program = try await GoClientTests.clientcheck()
        try await RedisServer.withServer { server in
            let store = try await CoordinationClient.connect(url: server.url)
            let lease = try await store.grantLease(ttl: 300)
            _ = try await store.put("held", "by a client", options: PutOptions(lease: lease.id))
            let proxy = try await CoordproxyProcess.start(redisURL: server.url)
            let streams = try Background(executable: program, arguments: [proxy.endpoint, "streamend", String(lease.id)],
                                         environment: ["PATH": "/usr/bin:/bin"])
            let opened = await streams.waitForLines(1, timeout: .seconds(60))
            #expect(opened == ["streaming"], "\(proxy.log())")

            let status = await proxy.terminate()
            #expect(status == 0, "coordproxy did not exit 0 within 30 s of SIGTERM: \(String(describing: status))\n\(proxy.log())")
            let lines = await streams.waitForLines(7, timeout: .seconds(30))
            #expect(lines == ["streaming",
                              "campaign ended Unavailable: etcdserver: server stopped",
                              "keepalive ended Unavailable: etcdserver: server stopped",
                              "lock ended Unavailable: etcdserver: server stopped",
                              "observe ended Unavailable: etcdserver: server stopped",
                              "watch ended Unavailable: etcdserver: server stopped",
                              "ok streamend"], "\(proxy.log())")
            #expect(proxy.log().contains("coordproxy stopped"))
            // The client's lease and its key are the client's: shutdown revokes nothing.
            let live = try await store.timeToLive(lease.id)
            #expect(live.ttl > 200)
            #expect(try await store.get("held").kvs.map { String(decoding: $0.value, as: UTF8.self) } == ["by a client"])
            await store.close()
        }
    }

    /// A Prometheus scrape while Redis holds coordproxy's queries (CLIENT PAUSE) is
    /// answered, with coordproxy_redis_up 0, instead of waiting for Redis (it waited
    /// as long as the pause: a stalled Redis stalled the scrapes that should show it).
    @Test func aScrapeWhileRedisIsPausedAnswersThatRedisIsNotUp() async throws {
        try await RedisServer.withServer { server in
            let proxy = try await CoordproxyProcess.start(redisURL: server.url, metrics: true)
            let admin = try await RedisConnection.connect(server.configuration)
            defer { Task { await admin.close() } }
            // (Eventually: on a loaded machine a scrape's second can pass before Redis answers.)
            #expect(await eventually(timeout: .seconds(30)) { ((try? await proxy.metrics()) ?? "").contains("coordproxy_redis_up 1") })
            _ = try await admin.send("CLIENT", "PAUSE", "30000", "WRITE")
            let paused = try await proxy.metrics()
            #expect(paused.contains("coordproxy_redis_up 0"), "\(paused)")
            _ = try await admin.send("CLIENT", "UNPAUSE")
            let back = await eventually(timeout: .seconds(30)) { ((try? await proxy.metrics()) ?? "").contains("coordproxy_redis_up 1") }
            #expect(back)
            _ = await proxy.terminate()
        }
    }

    /// A put in flight when SIGTERM comes (held in Redis by CLIENT PAUSE) is answered
    /// before coordproxy closes the connection it drains: its last stream's end used
    /// to close the connection before the answer was flushed, so a put applied in
    /// Redis failed at its client (which retries it).
    @Test func aPutInFlightAtSIGTERMIsAnsweredBeforeItsConnectionCloses() async throws {
        try await RedisServer.withServer { server in
            let proxy = try await CoordproxyProcess.start(redisURL: server.url, metrics: true)
            let admin = try await RedisConnection.connect(server.configuration)
            defer { Task { await admin.close() } }
            _ = try await admin.send("CLIENT", "PAUSE", "30000", "WRITE")
            let put = Task { try await etcdctl(["put", "drained", "answered"], endpoint: proxy.endpoint) }
            // In flight: coordproxy has the whole request and runs it; its script call
            // waits in Redis. (Redis's blocked clients do not tell: coordproxy's own
            // lease reaper's script waits there too.)
            let started = #"grpc_server_started_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put"} 1"#
            let held = await eventually(timeout: .seconds(30)) { ((try? await proxy.metrics()) ?? "").contains(started) }
            #expect(held, "\(proxy.log())")
            let exit = Task { await proxy.terminate() }
            _ = await eventually(timeout: .seconds(10)) { proxy.log().contains("shutting down") }
            _ = try await admin.send("CLIENT", "UNPAUSE")
            let result = try await put.value
            #expect(result.status == 0 && result.output == "OK\n", "the put's client got: \(result.status) \(result.output) \(result.error)\n\(proxy.log())")
            let status = await exit.value
            #expect(status == 0, "\(proxy.log())")
            let store = try await CoordinationClient.connect(url: server.url)
            #expect(try await store.get("drained").kvs.map { String(decoding: $0.value, as: UTF8.self) } == ["answered"])
            await store.close()
        }
    }

    /// Configured from the environment alone, as etcd is (`COORDPROXY_<FLAG>`, and
    /// `$REDIS_URL`): the namespace, name and listen address take effect; `--help`
    /// teaches and exits 0.
    @Test func theEnvironmentConfiguresCoordproxyAsFlagsDo() async throws {
        let executable = try builtExecutable("coordproxy")
        let help = try await run(executable, ["--help"], environment: ["PATH": "/usr/bin:/bin"])
        #expect(help.status == 0 && help.output.contains("--redis-url") && help.output.contains("COORDPROXY_") && help.output.contains("Examples:"),
                "\(help.output)\(help.error)")
        try await RedisServer.withServer { server in
            let logFile = try LogFile()
            defer { logFile.remove() }
            let log = logFile.text
            var port = 0
            var process: PipedProcess?
            defer { if let process, process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) } }
            // A free port can be taken by another test's server before coordproxy binds it.
            for _ in 1...3 {
                port = try ChildProcess.freeLoopbackPort()
                _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
                let environment = [
                    "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                    "REDIS_URL": server.url,
                    "COORDPROXY_LISTEN_CLIENT_URLS": "http://127.0.0.1:\(port)",
                    "COORDPROXY_NAMESPACE": "fromenv",
                    "COORDPROXY_NAME": "node-env",
                ]
                let started = try PipedProcess(executable, [], environment: environment, stdin: .null, stdout: .null, stderr: .file(logFile.path))
                process = started
                _ = await eventually(timeout: .seconds(60)) { log().contains("serving the etcd v3 API") || !started.isRunning }
                if started.isRunning || !log().contains("Address already in use") { break }
            }
            #expect(process?.isRunning == true && log().contains("serving the etcd v3 API"), "\(log())")
            let endpoint = "http://127.0.0.1:\(port)"
            let put = try await etcdctl(["put", "k", "v"], endpoint: endpoint)
            #expect(put.status == 0, "\(put)")
            let connection = try await RedisConnection.connect(server.configuration)
            defer { Task { await connection.close() } }
            #expect(try await connection.send("HEXISTS", "{fromenv}:kv", "k").int == 1, "the namespace did not come from COORDPROXY_NAMESPACE")
            #expect(try await connection.send("EXISTS", "{coord}:kv").int == 0)
            let members = try await etcdctl(["member", "list"], endpoint: endpoint)
            #expect(members.output.contains("node-env") && members.output.contains(endpoint), "\(members)")
        }
    }

    /// `coordproxy --dev` starts a private redis-server; killed with SIGKILL (no atexit,
    /// no shutdown), it must not leave that server running behind it.
    @Test func aSIGKILLedDevProxyTakesItsPrivateRedisServerWithItAndItsDirectoryGoesNext() async throws {
        let executable = try builtExecutable("coordproxy")
        let port = try ChildProcess.freeLoopbackPort()
        let logFile = try LogFile()
        defer { logFile.remove() }
        let log = logFile.text
        var environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        environment["TMPDIR"] = ProcessInfo.processInfo.environment["TMPDIR"]
        let process = try PipedProcess(executable, ["--dev", "--listen-client-urls", "http://127.0.0.1:\(port)"],
                                       environment: environment,
                                       stdin: .null, stdout: .null, stderr: .file(logFile.path))
        defer { if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) } }
        let serving = await eventually(timeout: .seconds(60)) { log().contains("serving the etcd v3 API") || !process.isRunning }
        #expect(serving && process.isRunning, "\(log())")
        let line = try #require(log().split(separator: "\n").first { $0.contains("started a private redis-server") }, "\(log())")
        let url = try #require(line.split(separator: " ").first { $0.hasPrefix("url=") }).dropFirst("url=".count)
        let connection = try await RedisConnection.connect(try RedisConfiguration(url: String(url)))
        let info = try await connection.send("INFO", "server").string ?? ""
        await connection.close()
        let pidLine = try #require(info.split(separator: "\r\n").first { $0.hasPrefix("process_id:") })
        let redisPID = try #require(pid_t(pidLine.dropFirst("process_id:".count)))
        defer {
            Glibc.kill(redisPID, SIGKILL)
            if case .unixSocket(let socket)? = try? RedisConfiguration(url: String(url)).endpoint {
                try? FileManager.default.removeItem(atPath: (socket as NSString).deletingLastPathComponent)
            }
        }
        /// Whether the process runs (a zombie awaiting its reaper does not).
        func running(_ pid: pid_t) -> Bool { !ChildProcess.hasExited(pid) }
        #expect(running(redisPID))
        // The directory has its owner's pid file before the kill. (Checked after it, a
        // private server that another test starts meanwhile may already have removed the
        // abandoned directory: removal goes one way, which the end of this test checks.)
        guard case .unixSocket(let socket)? = try? RedisConfiguration(url: String(url)).endpoint else {
            Issue.record("the private server's URL \(url) names no unix socket")
            return
        }
        let serverDirectory = (socket as NSString).deletingLastPathComponent
        #expect(FileManager.default.fileExists(atPath: serverDirectory + "/owner.pid"))
        Glibc.kill(process.processIdentifier, SIGKILL)
        let gone = await eventually(timeout: .seconds(20)) { !running(redisPID) }
        #expect(gone, "the private redis-server (pid \(redisPID)) outlived coordproxy killed with SIGKILL")
        // Its directory stays behind (nothing of coordproxy's ran), until the next private
        // server started on the machine removes it.
        #expect(await eventually(timeout: .seconds(10)) { !process.isRunning })
        try await RedisServer.withServer { _ in }
        #expect(!FileManager.default.fileExists(atPath: serverDirectory), "\(serverDirectory) was left behind")
    }

    /// An operator reading the log sees when Redis went away and when it came back,
    /// one line each, besides the refused requests.
    @Test func losingRedisAndItsReturnAreLoggedOnceEach() async throws {
        try await RedisServer.withServer { server in
            let proxy = try await CoordproxyProcess.start(redisURL: server.url)
            defer { proxy.kill() }
            #expect(!proxy.log().contains("lost Redis"))
            await server.kill()
            let lost = await eventually(timeout: .seconds(30)) { proxy.log().contains("lost Redis: requests fail with UNAVAILABLE until it answers again") }
            #expect(lost, "\(proxy.log())")
            // Still down a few probes later: one line, not one a second.
            try await Task.sleep(for: .milliseconds(2_500))
            try await server.restart()
            let back = await eventually(timeout: .seconds(30)) { proxy.log().contains("Redis answers again: serving from it") }
            #expect(back, "\(proxy.log())")
            let lines = proxy.log().split(separator: "\n")
            #expect(lines.filter { $0.contains("lost Redis") }.count == 1, "\(proxy.log())")
            #expect(lines.filter { $0.contains("Redis answers again") }.count == 1, "\(proxy.log())")
            let line = try #require(lines.first { $0.contains("lost Redis") })
            #expect(line.contains(server.url) || line.contains("127.0.0.1"), "the line names the Redis: \(line)")
            // And it serves again.
            let put = try await etcdctl(["put", "after", "1"], endpoint: proxy.endpoint)
            #expect(put.status == 0, "\(put)")
        }
    }

    /// A Redis-protocol client's session, kept alive by coordproxy while the connection
    /// lives (`--session-keepalive connection`, so that an idle client's lease does not
    /// lapse by itself), outlives a coordproxy that dies (SIGKILL: no revocation) by its
    /// lease's TTL (`--session-ttl`) and no more: then its lock is free.
    @Test func aKilledProxysRESPSessionsExpireAfterTheirTTLAndTheirLocksComeFree() async throws {
        try await RedisServer.withServer { server in
            let respPort = try ChildProcess.freeLoopbackPort()
            let proxy = try await CoordproxyProcess.start(redisURL: server.url, arguments: [
                "--listen-resp", "127.0.0.1:\(respPort)", "--session-ttl", "10", "--session-keepalive", "connection"])
            defer { proxy.kill() }
            let client = try await RedisConnection.connect(url: "redis://127.0.0.1:\(respPort)")
            let locked = try await client.send(["COORD.LOCK", "crashed"].map { Array($0.utf8) })
            let key = try #require(locked.array?.first?.bytes, "\(locked)")
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            let lease = try #require(try await store.get(key).kvs.first?.lease)
            #expect(try await store.timeToLive(lease).grantedTTL == 10)
            // Idle for most of the TTL: the proxy keeps the session alive meanwhile (a
            // third of the TTL at most since the last refresh; unrefreshed, 2 s would be left).
            try await Task.sleep(for: .seconds(8))
            #expect(try await store.timeToLive(lease).ttl > 4, "the proxy did not keep the connection's session alive")
            proxy.kill()
            try await Task.sleep(for: .seconds(2))
            #expect(try await store.get(key).count == 1, "the lock went with the proxy before its TTL")
            // Every request of the store reaps leases that are due: polling is enough.
            let freed = await eventually(timeout: .seconds(30)) { (try? await store.get(key).count) == 0 }
            #expect(freed, "the dead proxy's session kept its lock")
            await client.close()
        }
    }

    /// Redis at its maxmemory (noeviction) is etcd at its quota: writes fail with etcd's
    /// `database space exceeded` (RESOURCE_EXHAUSTED), the NOSPACE alarm is listed,
    /// the Redis protocol answers Redis's own OOM error; reads, deletes and compaction
    /// go on, and once memory is freed writes succeed and the alarm is gone.
    @Test func aRedisAtItsMaxmemoryIsEtcdAtItsQuota() async throws {
        try await RedisServer.withServer { server in
            let respPort = try ChildProcess.freeLoopbackPort()
            let proxy = try await CoordproxyProcess.start(redisURL: server.url, arguments: ["--listen-resp", "127.0.0.1:\(respPort)"])
            defer { proxy.kill() }
            let connection = try await RedisConnection.connect(server.configuration)
            defer { Task { await connection.close() } }
            let used = try #require((try await connection.send("INFO", "memory").string ?? "").split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("used_memory:") }.flatMap { Int($0.dropFirst("used_memory:".count)) })
            _ = try await connection.send("CONFIG", "SET", "maxmemory", String(used + 2 * 1024 * 1024))
            let value = String(repeating: "x", count: 100 * 1024)
            var refused: ProgramOutput?
            for index in 0..<100 {
                let put = try await etcdctl(["put", "big/\(index)"], endpoint: proxy.endpoint, input: value)
                if put.status != 0 { refused = put; break }
            }
            let error = try #require(refused, "100 puts of 100 KiB fit in 2 MiB")
            #expect(error.error.contains("Error: etcdserver: mvcc: database space exceeded"), "\(error)")
            // Memory stays full for what follows (a refused request's buffers, freed, could
            // let a small write fit again).
            _ = try await connection.send("CONFIG", "SET", "maxmemory", "1")
            let alarms = try await etcdctl(["alarm", "list"], endpoint: proxy.endpoint)
            #expect(alarms.status == 0 && alarms.output.contains("alarm:NOSPACE"), "\(alarms)")
            let redisCLI = try #require(ChildProcess.locate("redis-cli"))
            let resp = try await run(redisCLI, ["-p", String(respPort), "COORD.PUT", "small", "v"], environment: ["PATH": "/usr/bin:/bin"])
            #expect(resp.output.hasPrefix("OOM command not allowed when used memory > 'maxmemory'"), "\(resp.output)\(resp.error)")
            // Reads, deletes and compaction still work, as on etcd under NOSPACE; raising
            // maxmemory ends it.
            #expect(try await etcdctl(["get", "big/0", "--keys-only"], endpoint: proxy.endpoint).output == "big/0\n\n")
            let deleted = try await etcdctl(["del", "big/0"], endpoint: proxy.endpoint)
            #expect(deleted.status == 0 && deleted.output == "1\n", "\(deleted)")
            let revision = try #require(try await connection.send("GET", "{coord}:rev").string)
            let compacted = try await etcdctl(["compaction", revision], endpoint: proxy.endpoint)
            #expect(compacted.status == 0, "\(compacted)")
            _ = try await connection.send("CONFIG", "SET", "maxmemory", "0")
            let put = try await etcdctl(["put", "after", "1"], endpoint: proxy.endpoint)
            #expect(put.status == 0, "\(put)")
            #expect(try await etcdctl(["alarm", "list"], endpoint: proxy.endpoint).output == "")
        }
    }

    /// clientv3's watch resumes across a restart of the coordproxy it watches through,
    /// from the revision after the last it received: every put, some made while the
    /// proxy was down, arrives once, in revision order.
    @Test func aClientv3WatchResumesAcrossAProxyRestartWithoutGapOrRepeat() async throws {
        let program = try await GoClientTests.clientcheck()
        try await RedisServer.withServer { server in
            var proxy = try await CoordproxyProcess.start(redisURL: server.url)
            let port = try #require(Int(proxy.endpoint.split(separator: ":").last ?? ""))
            let watcher = try Background(executable: program, arguments: [proxy.endpoint, "resume", "60"], environment: ["PATH": "/usr/bin:/bin"])
            defer { watcher.signal(SIGKILL) }
            let watching = await watcher.waitForLines(1, timeout: .seconds(60))
            #expect(watching == ["watching"], "\(watcher.printed)")
            let store = try await CoordinationClient.connect(url: server.url)
            defer { Task { await store.close() } }
            func put(_ range: Range<Int>) async throws {
                for index in range { _ = try await store.put(String(format: "resume/%03d", index), "v") }
            }
            try await put(0..<20)
            try await Task.sleep(for: .milliseconds(300))
            proxy.kill()
            try await put(20..<40)
            proxy = try await CoordproxyProcess.start(redisURL: server.url, port: port)
            defer { proxy.kill() }
            try await put(40..<60)
            let lines = await watcher.waitForLines(2, timeout: .seconds(90))
            #expect(lines == ["watching", "ok resume"], "\(watcher.printed)")
        }
    }

    /// A Redis user whose permissions are taken away under a running coordproxy: its
    /// requests fail with UNAVAILABLE naming Redis's refusal and what to fix, nothing is
    /// written, and it serves again once the permissions are back.
    @Test func aRedisUserThatLosesItsPermissionsGetsAClearErrorAndNothingIsWritten() async throws {
        let user = RedisServer.ACLUser(name: "proxy", password: "proxy-pw")
        try await RedisServer.withServer(.init(transport: .tcp(), aclUsers: [user])) { server in
            guard case .tcp(let host, let port) = server.endpoint else { return }
            let proxy = try await CoordproxyProcess.start(redisURL: "redis://proxy:proxy-pw@\(host):\(port)")
            defer { proxy.kill() }
            #expect(try await etcdctl(["put", "k", "1"], endpoint: proxy.endpoint).status == 0)
            let admin = try await RedisConnection.connect(server.configuration)
            defer { Task { await admin.close() } }
            _ = try await admin.send("ACL", "SETUSER", "proxy", "-evalsha", "-eval", "-fcall")
            let refused = try await etcdctl(["put", "k", "2"], endpoint: proxy.endpoint)
            #expect(refused.status != 0, "\(refused)")
            #expect(refused.error.contains("coordproxy: Redis refused the request") && refused.error.contains("NOPERM")
                    && refused.error.contains("fix the Redis user's permissions"), "\(refused)")
            #expect(proxy.log().contains("Redis refused the request"), "the refusal is not in the log: \(proxy.log())")
            _ = try await admin.send("ACL", "SETUSER", "proxy", "+@all")
            let read = try await etcdctl(["get", "k", "--print-value-only"], endpoint: proxy.endpoint)
            #expect(read.output == "1\n", "the refused put was written: \(read)")
            #expect(try await etcdctl(["put", "k", "3"], endpoint: proxy.endpoint).status == 0)
        }
    }

    /// A Redis that is not up yet when coordproxy starts is waited for (logged once),
    /// and served from as soon as it answers.
    @Test func coordproxyStartedBeforeItsRedisWaitsForItThenServes() async throws {
        let executable = try builtExecutable("coordproxy")
        let redisPort = try ChildProcess.freeLoopbackPort()
        let port = try ChildProcess.freeLoopbackPort()
        let logFile = try LogFile()
        defer { logFile.remove() }
        let log = logFile.text
        let process = try PipedProcess(executable, ["--redis-url", "redis://127.0.0.1:\(redisPort)", "--listen-client-urls", "http://127.0.0.1:\(port)"],
                                       environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                                       stdin: .null, stdout: .null, stderr: .file(logFile.path))
        defer { if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) } }
        let waiting = await eventually(timeout: .seconds(30)) { log().contains("Redis does not answer; waiting for it") || !process.isRunning }
        #expect(waiting && process.isRunning, "\(log())")
        try await Task.sleep(for: .seconds(2))
        #expect(process.isRunning && log().components(separatedBy: "Redis does not answer").count == 2, "logged once: \(log())")
        try await RedisServer.withServer(.init(transport: .tcp(port: redisPort))) { _ in
            let serving = await eventually(timeout: .seconds(30)) { log().contains("serving the etcd v3 API") || !process.isRunning }
            #expect(serving && process.isRunning, "\(log())")
            let put = try await etcdctl(["put", "k", "v"], endpoint: "http://127.0.0.1:\(port)")
            #expect(put.status == 0, "\(put)")
            Glibc.kill(process.processIdentifier, SIGKILL)
        }
    }

    /// `--maxclients` (as Redis's): one Redis-protocol connection more gets Redis's error.
    @Test func maxclientsLimitsTheRedisProtocolConnections() async throws {
        try await RedisServer.withServer { server in
            let respPort = try ChildProcess.freeLoopbackPort()
            let proxy = try await CoordproxyProcess.start(redisURL: server.url, arguments: ["--listen-resp", "127.0.0.1:\(respPort)", "--maxclients", "1"])
            defer { proxy.kill() }
            let first = try await RedisConnection.connect(url: "redis://127.0.0.1:\(respPort)")
            #expect(try await first.send("PING") == .status("PONG"))
            do {
                let second = try await RedisConnection.connect(url: "redis://127.0.0.1:\(respPort)")
                await second.close()
                Issue.record("a second connection was served past --maxclients 1")
            } catch let error as RedisError {
                #expect(error.message.contains("max number of clients reached"), "\(error)")
            }
            #expect(try await first.send("PING") == .status("PONG"))
            await first.close()
        }
    }

    @Test func twoProxiesOnOneRedisServeOneStoreWatchesAndLocks() async throws {
        try await RedisServer.withServer { server in
            let first = try await CoordproxyProcess.start(redisURL: server.url, name: "first")
            let second = try await CoordproxyProcess.start(redisURL: server.url, name: "second")
            defer {
                first.kill()
                second.kill()
            }
            let store = try await CoordinationClient.connect(url: server.url)
            let start = try await store.currentRevision()

            // A watch through the second proxy sees every put made through the first,
            // in order (started at a revision, so it cannot miss one).
            let watch = try Background(etcdctl: ["watch", "w/", "--prefix", "--rev", String(start + 1)], endpoint: second.endpoint)
            for (index, value) in ["a", "b", "c"].enumerated() {
                let put = try await etcdctl(["put", "w/\(index)", value], endpoint: first.endpoint)
                #expect(put.status == 0 && put.output == "OK\n", "\(put)")
            }
            let events = await watch.waitForLines(9, timeout: .seconds(30))
            #expect(events == ["PUT", "w/0", "a", "PUT", "w/1", "b", "PUT", "w/2", "c"])

            // A read through the second proxy answers what the first wrote, at the same revision.
            let read = try await etcdctl(["get", "w/2", "-w", "json"], endpoint: second.endpoint)
            let json = try #require(try JSONSerialization.jsonObject(with: Data(read.output.utf8)) as? [String: Any])
            let header = try #require(json["header"] as? [String: Any])
            #expect((header["revision"] as? NSNumber)?.int64Value == start + 3)
            #expect((json["kvs"] as? [[String: Any]])?.first?["value"] as? String == Data("c".utf8).base64EncodedString())

            // A lock held through the first proxy keeps a locker on the second waiting
            // until it is released.
            let holder = try Background(etcdctl: ["lock", "shared"], endpoint: first.endpoint)
            // Without a command, etcdctl prints the lock key (and an empty line) and holds on.
            let held = await holder.waitForLines(1, timeout: .seconds(30)).first ?? ""
            #expect(held.hasPrefix("shared/"), "\(holder.printed)")
            let waiter = try Background(etcdctl: ["lock", "shared"], endpoint: second.endpoint)
            let inLine = await eventually {
                (try? await store.get("shared/", options: RangeOptions(rangeEnd: Array("shared0".utf8))).kvs.count) == 2
            }
            #expect(inLine, "the second locker never queued")
            #expect(waiter.printed.isEmpty, "the second proxy granted a held lock: \(waiter.printed)")
            holder.signal(SIGINT)
            let granted = await waiter.waitForLines(1, timeout: .seconds(30)).first ?? ""
            #expect(granted.hasPrefix("shared/") && granted != held, "\(waiter.printed)")
            waiter.signal(SIGINT)
            _ = await holder.wait()
            _ = await waiter.wait()
            watch.signal(SIGKILL)
            await store.close()
        }
    }

    /// In process, the same port taken: `run()` throws the ListenError and
    /// `boundAddresses()` answers that nothing is bound instead of waiting forever
    /// (the in-process tests start again on other ports on exactly that).
    @Test func anAPIServerThatCannotBindSaysSoToWhoeverWaitsForItsAddresses() async throws {
        try await RedisServer.withServer { server in
            let (holder, port) = try Self.holdLoopbackPort()
            defer { close(holder) }
            let store = try await CoordinationClient.connect(url: server.url)
            let api = EtcdAPIServer(store: store, listen: [.init(host: "127.0.0.1", port: port)], logger: Logger(label: "bind-test"))
            let serving = Task { try await api.run() }
            // Bounded, so that a wait that never ends fails the test instead of hanging it.
            let addresses = await withTaskGroup(of: [EtcdAPIServer.Address]?.self) { group in
                group.addTask { await api.boundAddresses() }
                group.addTask { try? await Task.sleep(for: .seconds(30)); return nil }
                let first = await group.next() ?? nil
                group.cancelAll()
                return first
            }
            #expect(addresses == [], "boundAddresses() did not answer within 30 s of a bind that failed")
            let result = await serving.result
            guard case .failure(let error) = result else {
                Issue.record("run() returned although the port is taken")
                return
            }
            #expect("\(error)".contains("cannot listen for clients on 127.0.0.1:\(port): Address already in use"), "\(error)")
            await store.close()
        }
    }

    /// A loopback port held by a listening socket of this process: (the socket, its port).
    static func holdLoopbackPort() throws -> (Int32, Int) {
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(holder >= 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 && listen(holder, 1) == 0 else {
            close(holder)
            throw ProxyStartError("could not hold a loopback port")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) }
        }
        return (holder, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// A client port another process holds: coordproxy exits non-zero with the socket
    /// error and the flag to change, not grpc-swift's "no listening address bound".
    /// With the Redis-protocol listener too, which binds beside it: before, that
    /// listener ignored the cancellation that follows a failed service, and coordproxy
    /// kept running without a word, serving RESP only.
    @Test(arguments: [[], ["--listen-resp", "127.0.0.1:0"]])
    func aClientPortInUseIsNamedInTheErrorAndTheExitStatus(extra: [String]) async throws {
        try await RedisServer.withServer { server in
            let (holder, port) = try Self.holdLoopbackPort()
            defer { close(holder) }
            let result = try await run(try builtExecutable("coordproxy"), ["--redis-url", server.url, "--listen-client-urls", "http://127.0.0.1:\(port)"] + extra,
                                       environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], timeout: .seconds(60))
            #expect(result.status != 0)
            #expect(result.error.contains("cannot listen for clients on 127.0.0.1:\(port): Address already in use (errno 98); choose another --listen-client-urls"), "\(result.error)")
        }
    }

    /// `--event-loops n` (and `COORDPROXY_EVENT_LOOPS`) is how many threads serve the
    /// clients: counted in /proc; 0 is refused as a usage error. The Redis connections'
    /// threads are named.
    @Test func eventLoopsSetsTheThreadsServingClients() async throws {
        try await RedisServer.withServer { server in
            func threadNames(_ pid: pid_t) -> [String] {
                let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
                return tasks.map { task in
                    ((try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
                }
            }
            func loopThreads(_ pid: pid_t) -> Int { threadNames(pid).filter { $0.hasPrefix("NIO-SGLTN-") }.count }
            let three = try await CoordproxyProcess.start(redisURL: server.url, arguments: ["--event-loops", "3", "--listen-resp", "127.0.0.1:\(try ChildProcess.freeLoopbackPort())"])
            defer { three.kill() }
            #expect(try await etcdctl(["put", "k", "v"], endpoint: three.endpoint).status == 0)
            #expect(loopThreads(three.processIdentifier) == 3)
            #expect(three.log().contains("event_loops=3"), "\(three.log())")
            // The Redis connections' threads carry names an operator can read in top -H.
            #expect(threadNames(three.processIdentifier).contains("redis:unix"), "\(threadNames(three.processIdentifier))")
            let refused = try await run(try builtExecutable("coordproxy"), ["--redis-url", server.url, "--event-loops", "0"],
                                        environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], timeout: .seconds(60))
            #expect(refused.status == 64, "\(refused)")
            #expect(refused.error.contains("--event-loops must be at least 1"), "\(refused.error)")
        }
    }

    @Test func metricsCountRequestsByMethodAndCodeAndShowOpenWatchers() async throws {
        try await RedisServer.withServer { server in
            let proxy = try await CoordproxyProcess.start(redisURL: server.url, metrics: true)
            defer { proxy.kill() }
            #expect(try await etcdctl(["put", "m", "1"], endpoint: proxy.endpoint).status == 0)
            #expect(try await etcdctl(["get", "m"], endpoint: proxy.endpoint).status == 0)
            // A call served by grpc-swift's server behind the fast path: counted once.
            #expect(try await etcdctl(["member", "list"], endpoint: proxy.endpoint).status == 0)
            let future = try await etcdctl(["get", "m", "--rev", "1000"], endpoint: proxy.endpoint)
            #expect(future.status != 0 && future.error.contains("required revision is a future revision"))
            let watch = try Background(etcdctl: ["watch", "m"], endpoint: proxy.endpoint)
            let watching = await eventually {
                (try? await proxy.metrics())?.contains("etcd_debugging_mvcc_watcher_total 1.0") == true
            }
            let text = try await proxy.metrics()
            #expect(watching, "\(text)")
            for line in [
                #"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="OK"} 1"#,
                #"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Range",grpc_code="OK"} 1"#,
                #"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Range",grpc_code="OutOfRange"} 1"#,
                #"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Range"} 2"#,
                #"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.Cluster",grpc_method="MemberList",grpc_code="OK"} 1"#,
                #"grpc_server_started_total{grpc_type="unary",grpc_service="etcdserverpb.Cluster",grpc_method="MemberList"} 1"#,
                "coordproxy_redis_up 1.0",
                "coordproxy_store_revision 2.0",
            ] {
                #expect(text.split(separator: "\n").contains(Substring(line)), "missing \(line) in\n\(text)")
            }
            #expect(text.contains("redis_client_round_trip_seconds_count"))
            #expect(text.contains(#"grpc_server_handling_seconds_bucket{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",le="#), "\(text)")
            // Leases: granted, renewed and revoked are counted; Redis round trips grow.
            func value(_ text: String, _ name: String) -> Double {
                text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
            }
            let roundTrips = value(text, "redis_client_round_trip_seconds_count")
            #expect(roundTrips > 0, "\(text)")
            let grant = try await etcdctl(["lease", "grant", "60"], endpoint: proxy.endpoint)
            let lease = try #require(grant.output.split(separator: " ").dropFirst().first.map(String.init), "\(grant)")
            #expect(try await etcdctl(["lease", "keep-alive", "--once", lease], endpoint: proxy.endpoint).status == 0)
            #expect(try await etcdctl(["lease", "revoke", lease], endpoint: proxy.endpoint).status == 0)
            let after = try await proxy.metrics()
            #expect(value(after, "etcd_debugging_lease_granted_total") == 1, "\(after)")
            #expect(value(after, "etcd_debugging_lease_renewed_total") == 1, "\(after)")
            #expect(value(after, "etcd_debugging_lease_revoked_total") == 1, "\(after)")
            #expect(value(after, "redis_client_round_trip_seconds_count") > roundTrips, "\(after)")
            watch.signal(SIGKILL)
            _ = await watch.wait()
            let closed = await eventually {
                (try? await proxy.metrics())?.contains("etcd_debugging_mvcc_watcher_total 0.0") == true
            }
            #expect(closed, "the watcher gauge did not return to 0")
        }
    }
}

/// A file in a temporary directory of its own for a process's stderr, and its text.
struct LogFile {
    let directory: String
    let path: String

    init() throws {
        directory = try ChildProcess.makeTemporaryDirectory(prefix: "coord-proxy")
        path = directory + "/coordproxy.log"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
    }

    /// Everything written so far.
    func text() -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// A coordproxy process on free loopback ports, its log in a file.
final class CoordproxyProcess: @unchecked Sendable {
    let endpoint: String
    let metricsPort: Int?
    private let process: PipedProcess
    private let logPath: String

    private init(endpoint: String, metricsPort: Int?, process: PipedProcess, logPath: String) {
        self.endpoint = endpoint
        self.metricsPort = metricsPort
        self.process = process
        self.logPath = logPath
    }

    /// Starts coordproxy on `redisURL` and waits until its gRPC port answers.
    static func start(redisURL: String, name: String = "default", metrics: Bool = false, port: Int? = nil, arguments extra: [String] = []) async throws -> CoordproxyProcess {
        // A free port can be taken by another test's server before coordproxy binds it
        // (the suite runs many at once): then coordproxy says so, and gets another.
        var attempt = 1
        while true {
            do {
                return try await startOnce(redisURL: redisURL, name: name, metrics: metrics, port: port, arguments: extra)
            } catch let error as RedisError where attempt < 3 && error.message.contains("Address already in use") {
                // Another free port; or, for a port asked for, a moment for it to come free.
                attempt += 1
                if port != nil { try await Task.sleep(for: .milliseconds(500)) }
            }
        }
    }

    private static func startOnce(redisURL: String, name: String, metrics: Bool, port: Int?, arguments extra: [String]) async throws -> CoordproxyProcess {
        let executable = try builtExecutable("coordproxy")
        let port = try port ?? ChildProcess.freeLoopbackPort()
        let metricsPort = metrics ? try ChildProcess.freeLoopbackPort() : nil
        let logPath = try LogFile().path
        let process = try PipedProcess(executable, ["--redis-url", redisURL, "--listen-client-urls", "http://127.0.0.1:\(port)", "--name", name]
            + (metricsPort.map { ["--listen-metrics-urls", "http://127.0.0.1:\($0)"] } ?? []) + extra,
            environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
            stdin: .null, stdout: .null, stderr: .file(logPath))
        let proxy = CoordproxyProcess(endpoint: "http://127.0.0.1:\(port)", metricsPort: metricsPort, process: process, logPath: logPath)
        let serving = await eventually(timeout: .seconds(60)) { proxy.log().contains("serving the etcd v3 API") || !process.isRunning }
        guard serving, process.isRunning else {
            proxy.kill()
            throw RedisError(.serverStartFailed, "coordproxy did not start: \(proxy.log())")
        }
        if metrics {
            _ = await eventually(timeout: .seconds(30)) { proxy.log().contains("serving metrics") }
        }
        // The Redis-protocol listener starts beside the gRPC one, not before it.
        if extra.contains("--listen-resp") {
            _ = await eventually(timeout: .seconds(30)) { proxy.log().contains("serving the Redis protocol") }
        }
        return proxy
    }

    func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    var processIdentifier: pid_t { process.processIdentifier }

    /// `GET /metrics` on the metrics listener.
    func metrics() async throws -> String {
        let port = try #require(metricsPort)
        let script = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:\(port)/metrics', timeout=10).read().decode())"
        let python = try #require(ChildProcess.locate("python3"))
        let result = try await run(python, ["-c", script], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(30))
        guard result.status == 0 else { throw RedisError(.protocolError, "GET /metrics failed: \(result.error)") }
        return result.output
    }

    /// SIGTERM, then waits up to 30 s for the exit status (nil: it had to be killed).
    func terminate() async -> Int32? {
        Glibc.kill(process.processIdentifier, SIGTERM)
        let process = self.process
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let deadline = Date().addingTimeInterval(30)
                while process.isRunning && Date() < deadline { usleep(20_000) }
                if process.isRunning {
                    Glibc.kill(process.processIdentifier, SIGKILL)
                    process.waitUntilExit()
                    continuation.resume(returning: nil)
                    return
                }
                process.waitUntilExit()
                continuation.resume(returning: process.terminationStatus)
            }
        }
    }

    /// SIGKILL, and gone before the caller goes on (a restart on its port must find the
    /// port free; a SIGKILLed process exits at once).
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { kill() }
}
