import Foundation
import Testing
import RedisClient

/// Runs the built coordctl (next to the test bundle) with `arguments` and `input`.
func coordctl(_ arguments: [String], url: String, input: String = "") throws -> (status: Int32, output: String, error: String) {
    let binary = Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("coordctl")
    var candidates = [binary]
    candidates.append(URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/coordctl"))
    guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw RedisError(.serverNotFound, "coordctl is not built; run swift build first")
    }
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.environment = ["REDIS_URL": url, "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"]
    let output = Pipe(), error = Pipe(), stdin = Pipe()
    process.standardOutput = output
    process.standardError = error
    process.standardInput = stdin
    try process.run()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    let out = output.fileHandleForReading.readDataToEndOfFile()
    let err = error.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

@Suite struct CoordCtlTests {
    @Test func etcdctlCommandsAndOutput() async throws {
        try await RedisServer.withServer { server in
            let url = server.url
            #expect(try coordctl(["put", "a", "1"], url: url).output == "OK\n")
            #expect(try coordctl(["put", "a", "2", "--prev-kv"], url: url).output == "OK\na\n1\n")
            #expect(try coordctl(["get", "a"], url: url).output == "a\n2\n")
            #expect(try coordctl(["get", "a", "--print-value-only"], url: url).output == "2\n")
            let json = try coordctl(["get", "a", "-w", "json"], url: url).output
            let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
            #expect((object?["header"] as? [String: Any])?["revision"] as? Int == 3)
            #expect((object?["kvs"] as? [[String: Any]])?.first?["value"] as? String == Data("2".utf8).base64EncodedString())
            #expect(try coordctl(["get", "a", "-w", "fields"], url: url).output == """
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
            #expect(try coordctl(["put", "p/1", "x"], url: url).status == 0)
            #expect(try coordctl(["get", "p", "--prefix", "--keys-only"], url: url).output == "p/1\n")

            let grant = try coordctl(["lease", "grant", "30"], url: url).output
            #expect(grant.hasPrefix("lease ") && grant.hasSuffix(" granted with TTL(30s)\n"))
            let lease = grant.split(separator: " ")[1]
            #expect(lease.count == 16)
            #expect(try coordctl(["put", "l/1", "v", "--lease=\(lease)"], url: url).status == 0)
            #expect(try coordctl(["lease", "timetolive", String(lease), "--keys"], url: url).output.contains("attached keys([l/1])"))
            #expect(try coordctl(["lease", "list"], url: url).output == "found 1 leases\n\(lease)\n")

            let txn = try coordctl(["txn"], url: url, input: "mod(\"a\") > \"0\"\n\nput a 3\nget a\n\nput a 9\n\n")
            #expect(txn.output == "SUCCESS\n\nOK\n\na\n3\n")
            #expect(try coordctl(["del", "a", "--prev-kv"], url: url).output == "1\na\n3\n")
            #expect(try coordctl(["lease", "revoke", String(lease)], url: url).output == "lease \(lease) revoked\n")
            #expect(try coordctl(["get", "l/1", "--count-only"], url: url).output == "0\n")
            #expect(try coordctl(["compaction", "3"], url: url).output == "compacted revision 3\n")
            let compacted = try coordctl(["get", "a", "--rev", "2"], url: url)
            #expect(compacted.status == 1)
            #expect(compacted.error.contains("Error: required revision 2 has been compacted"))
            let status = try coordctl(["endpoint", "status"], url: url)
            #expect(status.output.contains("revision 8,") && status.error.contains("warning: Redis persistence is off"))
            let refused = try coordctl(["get", "a", "--endpoints", "redis://127.0.0.1:1"], url: url)
            #expect(refused.status == 1 && refused.error.contains("could not connect to redis://127.0.0.1:1"))
        }
    }
}
