import Foundation
@testable import RedisClient
import Testing

/// coordctl's `-w json` has etcdctl 3.4's shapes: the same commands, etcdctl against
/// etcd and coordctl against Redis, print the same JSON (leaving out the cluster
/// fields, with lease IDs written <lease> and remaining TTLs left out), and the same
/// errors and exit codes.
@Suite struct CoordctlJSONTests {
    static let commands: [[String]] = [
        ["lease", "grant", "30", "-w", "json"],
        ["put", "k", "v", "--lease=$LEASE", "-w", "json"],
        ["lease", "list", "-w", "json"],
        ["lease", "timetolive", "$LEASE", "-w", "json"],
        ["lease", "timetolive", "$LEASE", "--keys", "-w", "json"],
        ["lease", "keep-alive", "--once", "$LEASE", "-w", "json"],
        ["txn", "-w", "json"],
        ["lease", "revoke", "$LEASE", "-w", "json"],
        ["lease", "timetolive", "$LEASE", "-w", "json"],
        ["get", "", "--prefix", "-w", "json"],
        ["put", "d/1", "1", "-w", "json"],
        ["put", "d/1", "2", "--prev-kv", "-w", "json"],
        ["put", "d/2", "3"],
        ["get", "d/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit=1", "-w", "json"],
        ["del", "d/", "--prefix", "--prev-kv", "-w", "json"],
        ["del", "d/", "--prefix", "-w", "json"],
        ["compaction", "3"],
        ["get", "d/1", "--rev=2", "-w", "json"],
        ["get", "d/1", "--rev=9", "-w", "json"],
    ]

    static func transcript(_ run: ([String], String) async throws -> ProgramOutput) async throws -> [String] {
        var lease = ""
        var lines: [String] = []
        for command in commands {
            let arguments = command.map { $0.replacingOccurrences(of: "$LEASE", with: lease) }
            let input = command.first == "txn" ? "\nput t 1\nget t\n\n\n" : ""
            let result = try await run(arguments, input)
            if command.starts(with: ["lease", "grant"]),
               let object = try? JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any],
               let id = (object["ID"] as? NSNumber)?.int64Value {
                lease = String(UInt64(bitPattern: id), radix: 16)
            }
            var text = normalizedJSON(result.output.trimmingCharacters(in: .newlines), lease: Int64(lease, radix: 16))
            if command.contains("timetolive"), var object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] {
                if (object["ttl"] as? Int ?? 0) > 0 { object["ttl"] = "<remaining>" }
                text = String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
            }
            // An error's message, without etcdctl's log lines (timestamps) before it and
            // without coordctl's detail after etcd's message.
            let error = result.error.split(separator: "\n").filter { $0.hasPrefix("Error:") }
                .map { $0.split(separator: " (", maxSplits: 1).first.map(String.init) ?? "" }.joined(separator: "\n")
            lines.append("\(command.joined(separator: " ")) -> exit \(result.status): \(text) \(error)")
        }
        return lines
    }

    @Test func leaseTxnAndGetJSONHaveEtcdctlsShapes() async throws {
        let reference = try await ReferenceEtcd.withServer { etcd in
            try await Self.transcript { arguments, input in try await etcdctl(arguments, endpoint: etcd.endpoint, input: input) }
        }
        let coordctl = try builtCoordctl()
        let ours = try await RedisServer.withServer { server in
            try await Self.transcript { arguments, input in
                try await run(coordctl, arguments, environment: ["REDIS_URL": server.url, "PATH": "/usr/bin:/bin"], input: input)
            }
        }
        #expect(ours.count == reference.count)
        for (theirs, mine) in zip(reference, ours) { #expect(mine == theirs) }
    }

    @Test func endpointStatusIsAnArrayOfEndpointAndStatus() async throws {
        let coordctl = try builtCoordctl()
        try await RedisServer.withServer { server in
            let result = try await run(coordctl, ["endpoint", "status", "-w", "json"], environment: ["REDIS_URL": server.url, "PATH": "/usr/bin:/bin"])
            #expect(result.status == 0, "\(result)")
            let entries = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [[String: Any]])
            let status = try #require(entries.first?["Status"] as? [String: Any])
            #expect(entries.first?["Endpoint"] as? String == server.url)
            #expect(Set((status["header"] as? [String: Any] ?? [:]).keys) == ["cluster_id", "member_id", "revision", "raft_term"])
            #expect(status["raftIndex"] as? Int == 1 && status["version"] as? String == "3.4.0")
            // Redis's durability facts beside etcd's fields.
            #expect(status["replicas"] as? Int == 0 && status["appendfsync"] as? String == "everysec" && status["appendonly"] as? Bool == false)
        }
    }
}

/// The coordctl this package built (beside the test bundle, else in .build/debug).
func builtCoordctl() throws -> String { try builtExecutable("coordctl") }

/// An executable this package built (beside the test bundle, else in .build/debug).
func builtExecutable(_ name: String) throws -> String {
    let candidates = [
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent(name).path,
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/\(name)").path,
    ]
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw RedisError(.serverNotFound, "\(name) is not built; run swift build --build-tests first")
    }
    return found
}
