import Foundation
@testable import RedisClient
import Testing

/// etcd's own Go client (clientv3 and clientv3/concurrency, Debian's
/// golang-etcd-server-dev) against coordproxy: Tests/EtcdAPITests/GoClient.
@Suite struct GoClientTests {
    /// The built Go program: $COORD_GO_CLIENTCHECK (scripts/test.sh builds it), else
    /// built here with `go build` in GOPATH mode.
    static func clientcheck() async throws -> String {
        if let built = ProcessInfo.processInfo.environment["COORD_GO_CLIENTCHECK"], FileManager.default.isExecutableFile(atPath: built) {
            return built
        }
        guard let go = ChildProcess.locate("go") else {
            throw RedisError(.serverNotFound, "go was not found on PATH; install golang-go and golang-etcd-server-dev, or run scripts/test.sh")
        }
        // The package's files by name (GOPATH mode builds no directory given by an absolute path).
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GoClient").path
        let sources = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".go") }.sorted().map { directory + "/" + $0 }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("clientcheck-\(UUID().uuidString)").path
        var environment = ProcessInfo.processInfo.environment
        environment["GO111MODULE"] = "off"
        environment["GOPATH"] = "/usr/share/gocode"
        if environment["GOCACHE"] == nil { environment["GOCACHE"] = FileManager.default.temporaryDirectory.appendingPathComponent("gocache").path }
        let build = try await run(go, ["build", "-o", output] + sources, environment: environment, timeout: .seconds(600))
        guard build.status == 0 else {
            throw RedisError(.serverStartFailed, "go build of the clientv3 checks failed (is golang-etcd-server-dev installed?): \(build.error)")
        }
        return output
    }

    /// The program's `scenario` run against a private etcd 3.4 and against coordproxy,
    /// one after the other or `concurrently`.
    static func onEtcdAndProxy(_ scenario: String, concurrently: Bool = false) async throws -> (etcd: ProgramOutput, proxy: ProgramOutput) {
        let program = try await clientcheck()
        @Sendable func scenarioOutput(_ endpoint: String) async throws -> ProgramOutput {
            try await run(program, [endpoint, scenario], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(300))
        }
        if concurrently {
            async let onEtcd = ReferenceEtcd.withServer { etcd in try await scenarioOutput(etcd.endpoint) }
            async let onProxy = withProxy { proxy in try await scenarioOutput(proxy.endpoint) }
            return try await (onEtcd, onProxy)
        }
        let onEtcd = try await ReferenceEtcd.withServer { etcd in try await scenarioOutput(etcd.endpoint) }
        return (onEtcd, try await withProxy { proxy in try await scenarioOutput(proxy.endpoint) })
    }

    @Test func clientv3SessionMutexElectionSTMWatchLeaseAndBadInputScenariosPass() async throws {
        let program = try await Self.clientcheck()
        try await withProxy { proxy in
            let result = try await run(program, [proxy.endpoint, "all"], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(300))
            #expect(result.status == 0, "\(result.error)")
            #expect(result.output == "ok session\nok mutex\nok election\nok stm\nok watch\nok lease\nok badinput\nok slowwatch\n", "\(result.output)\(result.error)")
        }
    }

    /// etcd's server-side Lock and Election services (v3lockpb, v3electionpb) through
    /// etcd's generated Go clients: the same checks (keys, waiting, headers, leases the
    /// server grants for lease 0, etcd's errors and their codes) pass against etcd 3.4
    /// and against coordproxy; and a Lock sent over plain HTTP/2 with a grpc-timeout
    /// (nothing but the server ends it) is ended at its deadline, its key removed, on
    /// coordproxy's fast path and on grpc-swift's.
    @Test func theLockAndElectionServicesAnswerAsEtcdsDo() async throws {
        let program = try await Self.clientcheck()
        let scenarios = ["v3lock", "v3election", "deadline"]
        func runAll(_ endpoint: String) async throws -> [ProgramOutput] {
            var results: [ProgramOutput] = []
            for scenario in scenarios {
                results.append(try await run(program, [endpoint, scenario], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(300)))
            }
            return results
        }
        let onEtcd = try await ReferenceEtcd.withServer { etcd in try await runAll(etcd.endpoint) }
        let onProxy = try await withProxy { proxy in try await runAll(proxy.endpoint) }
        // Through grpc-swift's own path too (--no-grpc-fast-path), where its deadline
        // interceptor ends the calls.
        let onSlowPath = try await withProxy(fastPath: false) { proxy in try await runAll(proxy.endpoint) }
        for (index, scenario) in scenarios.enumerated() {
            #expect(onEtcd[index].status == 0 && onEtcd[index].output == "ok \(scenario)\n", "etcd: \(onEtcd[index].output)\(onEtcd[index].error)")
            #expect(onProxy[index].status == 0 && onProxy[index].output == "ok \(scenario)\n", "coordproxy: \(onProxy[index].output)\(onProxy[index].error)")
            #expect(onSlowPath[index].status == 0 && onSlowPath[index].output == "ok \(scenario)\n",
                    "coordproxy --no-grpc-fast-path: \(onSlowPath[index].output)\(onSlowPath[index].error)")
        }
    }

    /// The Watch stream's requests, sent raw (watchapi.go): caller-chosen watch IDs and a
    /// duplicate one, filters, prev_kv, a server-chosen ID, a progress request, a
    /// cancel (and a second one of the same ID), a watch of history from a start
    /// revision and one from a future revision give the same responses, in the same
    /// order, from etcd 3.4 and from coordproxy (revisions relative to the start).
    @Test func watchStreamRequestsGetEtcdsResponses() async throws {
        let (onEtcd, onProxy) = try await Self.onEtcdAndProxy("watchapi")
        #expect(onEtcd.status == 0 && onEtcd.output.hasSuffix("ok watchapi\n"), "etcd: \(onEtcd.output)\(onEtcd.error)")
        #expect(onProxy.status == 0, "coordproxy: \(onProxy.output)\(onProxy.error)")
        #expect(onEtcd.output.contains("mvcc: duplicate watch ID provided on the WatchStream") && onEtcd.output.contains("progress request: id=-1"),
                "the scenario no longer shows what it is for: \(onEtcd.output)")
        let theirs = onEtcd.output.split(separator: "\n", omittingEmptySubsequences: false)
        let ours = onProxy.output.split(separator: "\n", omittingEmptySubsequences: false)
        for (index, line) in theirs.enumerated() {
            #expect(index < ours.count && ours[index] == line, "response \(index): etcd \(line), coordproxy \(index < ours.count ? ours[index] : "nothing")")
        }
        #expect(ours.count == theirs.count, "coordproxy printed \(ours.count) lines, etcd \(theirs.count):\n\(onProxy.output)")
    }

    /// One revision of 3 MiB of events (30 keys of 100 KiB deleted at once, watched
    /// with their previous values): in fragments, as etcd sends them, to a watch that
    /// asked for fragments (split past etcd's 2 MiB: its 1.5 MiB request limit and
    /// 512 KiB of gRPC headroom), whole to one that did not; the same from etcd 3.4.
    @Test func aRevisionOverTwoMiBIsSentInFragmentsAsEtcdSendsIt() async throws {
        let (onEtcd, onProxy) = try await Self.onEtcdAndProxy("watchfragment")
        let expected = """
            fragment=true: 2 response(s), all but the last flagged true, every event of one revision in key order true
            fragment=false: 1 response(s), all but the last flagged true, every event of one revision in key order true
            ok watchfragment

            """
        #expect(onEtcd.status == 0 && onEtcd.output == expected, "etcd: \(onEtcd.output)\(onEtcd.error)")
        #expect(onProxy.status == 0 && onProxy.output == expected, "coordproxy: \(onProxy.output)\(onProxy.error)")
    }

    /// The bad-input checks (unknown methods, compression, malformed protobuf, oversized
    /// requests, on unary calls and a Watch stream) hold against etcd 3.4 itself: what
    /// coordproxy answers in the test above is etcd's answer.
    @Test func badInputChecksHoldAgainstEtcdItself() async throws {
        let program = try await Self.clientcheck()
        let result = try await ReferenceEtcd.withServer { etcd in
            try await run(program, [etcd.endpoint, "badinput"], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(300))
        }
        #expect(result.status == 0 && result.output == "ok badinput\n", "etcd: \(result.output)\(result.error)")
    }

    /// etcd's server lets clients ping to keep idle connections alive; so does
    /// coordproxy's (grpc-swift's default policy would answer GOAWAY too_many_pings).
    /// The same scenario against etcd 3.4 and coordproxy, side by side.
    @Test func anIdleClientv3ClientWithKeepAlivePingsKeepsItsConnection() async throws {
        // Side by side: 32 s of idling each.
        let (etcd, proxy) = try await Self.onEtcdAndProxy("idle", concurrently: true)
        #expect(etcd.status == 0 && etcd.output == "ok idle\n", "etcd: \(etcd.output)\(etcd.error)")
        #expect(proxy.status == 0 && proxy.output == "ok idle\n", "coordproxy: \(proxy.output)\(proxy.error)")
    }

    @Test func aBusyClientv3ClientKeepsItsConnectionAndEachPutIsAppliedOnce() async throws {
        let program = try await Self.clientcheck()
        try await withProxy { proxy in
            let result = try await run(program, [proxy.endpoint, "busy"], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(300))
            #expect(result.status == 0 && result.output == "ok busy\n", "\(result.output)\(result.error)")
        }
    }

    @Test func clientv3MutexExcludesAcrossFourProcesses() async throws {
        let program = try await Self.clientcheck()
        try await withProxy { proxy in
            let log = FileManager.default.temporaryDirectory.appendingPathComponent("holds-\(UUID().uuidString)").path
            defer { unlink(log) }
            let holders = (0..<4).map { _ in
                Task { try await run(program, [proxy.endpoint, "hold", "/shared-lock/", "25", log], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(300)) }
            }
            for holder in holders {
                let result = try await holder.value
                #expect(result.status == 0, "\(result.error)")
            }
            let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
            #expect(lines.count == 200)
            var revisions: [Int64] = []
            for (index, line) in lines.enumerated() {
                let fields = line.split(separator: " ")
                if index % 2 == 0 {
                    #expect(fields.first == "in", "overlapping holders at line \(index): \(line)")
                    revisions.append(Int64(fields.last ?? "") ?? 0)
                } else {
                    #expect(fields.first == "out" && fields[1] == lines[index - 1].split(separator: " ")[1], "overlapping holders at line \(index): \(line)")
                }
            }
            #expect(revisions == revisions.sorted(), "holds were not granted in revision order")
        }
    }
}
