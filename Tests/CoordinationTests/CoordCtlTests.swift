import Foundation
import Testing
@testable import RedisClient

/// Runs the built coordctl (next to the test bundle) with `arguments` and `input`.
///
/// The child is awaited on a thread of its own: blocking a thread of the cooperative
/// pool (2 on this machine) would stall every other test running beside this one.
func coordctl(_ arguments: [String], url: String, input: String = "") async throws -> (status: Int32, output: String, error: String) {
    let binary = Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("coordctl")
    var candidates = [binary]
    candidates.append(URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/coordctl"))
    guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw RedisError(.serverNotFound, "coordctl is not built; run swift build first")
    }
    let environment = ["REDIS_URL": url, "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"]
    return try await runToCompletion(executable, arguments, environment: environment, input: input)
}

/// Runs a program to completion on a thread of its own and returns its status and output.
func runToCompletion(_ executable: URL, _ arguments: [String], environment: [String: String], input: String = "") async throws -> (status: Int32, output: String, error: String) {
    let finished = try await ChildProcess.run(executable.path, arguments, environment: environment, input: input, timeout: .seconds(300))
    return (finished.status, finished.output, finished.error)
}

@Suite struct CoordCtlTests {
    @Test func etcdctlCommandsAndOutput() async throws {
        try await RedisServer.withServer { server in
            let url = server.url
            #expect(try await coordctl(["put", "a", "1"], url: url).output == "OK\n")
            #expect(try await coordctl(["put", "a", "2", "--prev-kv"], url: url).output == "OK\na\n1\n")
            #expect(try await coordctl(["get", "a"], url: url).output == "a\n2\n")
            #expect(try await coordctl(["get", "a", "--print-value-only"], url: url).output == "2\n")
            let json = try await coordctl(["get", "a", "-w", "json"], url: url).output
            let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
            #expect((object?["header"] as? [String: Any])?["revision"] as? Int == 3)
            #expect((object?["kvs"] as? [[String: Any]])?.first?["value"] as? String == Data("2".utf8).base64EncodedString())
            #expect(try await coordctl(["get", "a", "-w", "fields"], url: url).output == """
                "ClusterID" : 0
                "MemberID" : 0
                "Revision" : 3
                "RaftTerm" : 0
                "Key" : "a"
                "CreateRevision" : 2
                "ModRevision" : 3
                "Version" : 2
                "Value" : "2"
                "Lease" : 0
                "More" : false
                "Count" : 1

                """)
            #expect(try await coordctl(["put", "p/1", "x"], url: url).status == 0)
            #expect(try await coordctl(["get", "p", "--prefix", "--keys-only"], url: url).output == "p/1\n")

            let grant = try await coordctl(["lease", "grant", "30"], url: url).output
            #expect(grant.hasPrefix("lease ") && grant.hasSuffix(" granted with TTL(30s)\n"))
            let lease = grant.split(separator: " ")[1]
            #expect(lease.count == 16)
            #expect(try await coordctl(["put", "l/1", "v", "--lease=\(lease)"], url: url).status == 0)
            #expect(try await coordctl(["lease", "timetolive", String(lease), "--keys"], url: url).output.contains("attached keys([l/1])"))
            #expect(try await coordctl(["lease", "list"], url: url).output == "found 1 leases\n\(lease)\n")

            let txn = try await coordctl(["txn"], url: url, input: "mod(\"a\") > \"0\"\n\nput a 3\nget a\n\nput a 9\n\n")
            #expect(txn.output == "SUCCESS\n\nOK\n\na\n3\n")
            #expect(try await coordctl(["del", "a", "--prev-kv"], url: url).output == "1\na\n3\n")
            #expect(try await coordctl(["lease", "revoke", String(lease)], url: url).output == "lease \(lease) revoked\n")
            #expect(try await coordctl(["get", "l/1", "--count-only"], url: url).output == "0\n")
            #expect(try await coordctl(["compaction", "3"], url: url).output == "compacted revision 3\n")
            let compacted = try await coordctl(["get", "a", "--rev", "2"], url: url)
            #expect(compacted.status == 1)
            // etcdctl's message first, then coordctl's detail.
            #expect(compacted.error.contains("Error: etcdserver: mvcc: required revision has been compacted (required revision 2 has been compacted; the oldest available is 3)"),
                    "\(compacted.error)")
            let status = try await coordctl(["endpoint", "status"], url: url)
            #expect(status.output.contains("revision 8,") && status.output.contains("appendfsync everysec, replicas 0")
                    && status.error.contains("warning: Redis persistence is off"), "\(status)")
            let refused = try await coordctl(["get", "a", "--endpoints", "redis://127.0.0.1:1"], url: url)
            #expect(refused.status == 1 && refused.error.contains("could not connect to redis://127.0.0.1:1"))
        }
    }
}

@Suite struct CoordCtlGlobalFlagTests {
    @Test func globalFlagsComeBeforeTheSubcommandAndEndpointsTakeHostPort() async throws {
        try await RedisServer.withServer(.init(transport: .tcp())) { server in
            let hostPort = String(server.url.dropFirst("redis://".count))
            // REDIS_URL points nowhere: only the flags can find the server.
            let nowhere = "redis://127.0.0.1:1"
            #expect(try await coordctl(["--endpoints=\(hostPort)", "put", "a", "1"], url: nowhere).output == "OK\n")
            #expect(try await coordctl(["--endpoints", hostPort, "-w", "json", "--command-timeout", "5s", "get", "a"], url: nowhere).output.contains("\"kvs\""))
            let grant = try await coordctl(["--endpoints", hostPort, "-w", "json", "lease", "grant", "30"], url: nowhere)
            #expect(grant.output.contains("\"TTL\":30"), "\(grant)")
            let locked = try await coordctl(["--endpoints", hostPort, "lock", "jobs", "--", "sh", "-c", "echo held"], url: nowhere)
            #expect(locked.output == "held\n", "\(locked)")
            let badDuration = try await coordctl(["--dial-timeout", "soon", "get", "a"], url: server.url)
            #expect(badDuration.status == 64 && badDuration.error.contains("invalid duration soon"), "\(badDuration)")
            let version = try await coordctl(["version"], url: nowhere)
            #expect(version.status == 0 && version.output.hasSuffix("API version: 3.4\n"), "\(version)")
        }
    }
}
