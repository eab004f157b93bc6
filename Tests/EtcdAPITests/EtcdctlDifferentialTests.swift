import Foundation
import Testing

/// The same etcdctl 3.4 command sequence run against a real etcd 3.4 and against
/// coordproxy on Redis: outputs, errors and exit codes must be identical (leaving
/// out cluster_id, member_id and raft_term, and with lease IDs, which etcd picks at
/// random, written as <lease>).
@Suite(.serialized) struct EtcdctlDifferentialTests {
    /// One etcdctl invocation; `$LEASE` is replaced by the lease granted earlier.
    struct Step: Sendable {
        var arguments: [String]
        var input = ""
    }

    static let tooManyOps = String(repeating: "put k v\n", count: 129)

    static let steps: [Step] = [
        Step(arguments: ["put", "a", "1"]),
        Step(arguments: ["put", "a", "2", "--prev-kv"]),
        Step(arguments: ["put", "b", "1", "-w", "json"]),
        Step(arguments: ["get", "a", "-w", "json"]),
        Step(arguments: ["get", "a", "c"]),
        Step(arguments: ["get", "", "--prefix", "-w", "json"]),
        Step(arguments: ["get", "", "--from-key", "--keys-only"]),
        Step(arguments: ["get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]),
        Step(arguments: ["get", "", "--prefix", "--limit", "1", "-w", "json"]),
        Step(arguments: ["get", "", "--prefix", "--keys-only", "--sort-by=VERSION", "--order=ASCEND"]),
        Step(arguments: ["get", "", "--prefix", "--consistency=s", "-w", "json"]),
        Step(arguments: ["get", "missing", "-w", "json"]),
        Step(arguments: ["del", "a", "--prev-kv"]),
        Step(arguments: ["del", "missing"]),
        Step(arguments: ["get", "a", "--rev", "3", "-w", "json"]),
        Step(arguments: ["txn", "-w", "json"], input: "mod(\"b\") > \"0\"\n\nput b 2\nget b\n\nput b 9\n\n"),
        Step(arguments: ["txn"], input: "value(\"b\") = \"nope\"\n\nput b 3\n\nget b\ndel b\n\n"),
        Step(arguments: ["txn"], input: "\n" + tooManyOps + "\n\n"),
        Step(arguments: ["put", "c", "1"]),
        Step(arguments: ["put", "c", "2"]),
        Step(arguments: ["compaction", "5"]),
        Step(arguments: ["get", "c", "--rev", "3"]),
        Step(arguments: ["get", "c", "--rev", "5", "-w", "json"]),
        Step(arguments: ["get", "c", "--rev", "100"]),
        Step(arguments: ["compaction", "4"]),
        Step(arguments: ["compaction", "100"]),
        Step(arguments: ["put", "", "v"]),
        Step(arguments: ["put", "big"], input: String(repeating: "x", count: 1_600_000)),
        Step(arguments: ["lease", "grant", "60"]),
        Step(arguments: ["put", "l/1", "v", "--lease=$LEASE"]),
        Step(arguments: ["put", "l/2", "v", "--lease=$LEASE"]),
        Step(arguments: ["lease", "list"]),
        Step(arguments: ["lease", "keep-alive", "--once", "$LEASE"]),
        Step(arguments: ["get", "l/", "--prefix", "-w", "json"]),
        Step(arguments: ["lease", "revoke", "$LEASE"]),
        Step(arguments: ["get", "l/", "--prefix"]),
        Step(arguments: ["lease", "timetolive", "$LEASE"]),
        Step(arguments: ["lease", "keep-alive", "--once", "$LEASE"]),
        Step(arguments: ["lease", "revoke", "$LEASE"]),
        Step(arguments: ["put", "x", "v", "--lease=$LEASE"]),
        Step(arguments: ["put", "x", "v", "--lease=1234abcd"]),
        Step(arguments: ["del", "", "--prefix"]),
        Step(arguments: ["get", "", "--prefix", "-w", "json"]),
        // Maintenance and auth as an etcd without authentication and without users.
        Step(arguments: ["defrag"]),
        Step(arguments: ["move-leader", "1"]),
        Step(arguments: ["user", "list"]),
        Step(arguments: ["user", "list", "-w", "json"]),
        Step(arguments: ["role", "list", "-w", "json"]),
        Step(arguments: ["user", "get", "root"]),
        Step(arguments: ["role", "get", "admin"]),
        Step(arguments: ["auth", "disable"]),
        Step(arguments: ["auth", "enable"]),
    ]

    /// A seeded random sequence of etcdctl's KV commands: puts (with --prev-kv), gets
    /// with every range option etcdctl 3.4 has (prefix, from-key, range end, limit,
    /// sort target and order, revision, keys-only), deletes (prefix, from-key, range end,
    /// --prev-kv), txns (compares of value, version, create and mod revision with each
    /// operator; puts, gets and deletes in both branches) and compactions, some with
    /// `-w json`. Revisions are drawn from the sequence's length, so some are in the
    /// future and, after a compaction, some compacted.
    static func randomSteps(seed: UInt64, count: Int) -> [Step] {
        var random = SplitMix64(seed: seed)
        let keys = ["a", "a/1", "a/2", "a/3", "b", "b/1", "c"]
        func key() -> String { keys[random.below(keys.count)] }
        func value() -> String { ["x", "yy", "10", "9", "zzz"][random.below(5)] }
        // About half the steps write: mostly past revisions, some in the future.
        func revision(_ step: Int) -> String { String(1 + random.below(step / 2 + 3)) }
        func range(into arguments: inout [String]) {
            switch random.below(4) {
            case 0: arguments.append("--prefix")
            case 1: arguments.append("--from-key")
            case 2: arguments.append(key())
            default: break
            }
        }
        var steps: [Step] = []
        for index in 0..<count {
            var arguments: [String]
            var input = ""
            switch random.below(10) {
            case 0, 1, 2:
                arguments = ["put", key(), value()]
                if random.below(3) == 0 { arguments.append("--prev-kv") }
            case 3, 4, 5:
                arguments = ["get", key()]
                range(into: &arguments)
                if random.below(3) == 0 { arguments += ["--limit", String(1 + random.below(3))] }
                if random.below(3) == 0 {
                    arguments += ["--sort-by", ["KEY", "VERSION", "CREATE", "MODIFY", "VALUE"][random.below(5)],
                                  "--order", ["ASCEND", "DESCEND"][random.below(2)]]
                }
                if random.below(4) == 0 { arguments += ["--rev", revision(index)] }
                // (etcdctl 3.4's get has no --count-only.)
                if random.below(5) == 0 { arguments.append("--keys-only") }
            case 6, 7:
                arguments = ["del", key()]
                range(into: &arguments)
                if random.below(2) == 0 { arguments.append("--prev-kv") }
            case 8:
                arguments = ["txn"]
                let target = ["value", "version", "create", "mod"][random.below(4)]
                let operand = target == "value" ? "\"\(value())\"" : target == "version" ? "\"\(random.below(3))\"" : "\"\(random.below(index / 2 + 3))\""
                let compare = "\(target)(\"\(key())\") \(["=", "!=", "<", ">"][random.below(4)]) \(operand)"
                func op() -> String {
                    switch random.below(3) {
                    case 0: return "put \(key()) \(value())"
                    case 1: return "get \(key())"
                    default: return "del \(key())"
                    }
                }
                input = "\(compare)\n\n\(op())\n\n\(op())\n\n"
            default:
                arguments = ["compaction", revision(index)]
            }
            if random.below(4) == 0 && arguments[0] != "compaction" { arguments += ["-w", "json"] }
            steps.append(Step(arguments: arguments, input: input))
        }
        return steps
    }

    /// Runs the steps against `endpoint`; one printable record per step.
    static func transcript(_ endpoint: String, steps: [Step] = steps) async throws -> [String] {
        var lease = ""
        var records: [String] = []
        for step in steps {
            let arguments = step.arguments.map { $0.replacingOccurrences(of: "$LEASE", with: lease.isEmpty ? "0" : lease) }
            let result = try await etcdctl(arguments, endpoint: endpoint, input: step.input)
            if step.arguments.starts(with: ["lease", "grant"]), let id = result.output.split(separator: " ").dropFirst().first {
                lease = String(id)
            }
            func clean(_ text: String) -> String {
                // etcdctl's own warning log lines carry timestamps, client IDs and ports.
                let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
                    .filter { !$0.hasPrefix("{\"level\":") }
                    .map { line -> String in
                        guard !lease.isEmpty else { return String(line) }
                        if line == lease { return "<lease>" }
                        return line.replacingOccurrences(of: "lease \(lease) ", with: "lease <lease> ")
                    }
                // `defrag` names the endpoint it defragmented.
                let text = lines.joined(separator: "\n").replacingOccurrences(of: endpoint, with: "<endpoint>")
                return normalizedJSON(text, lease: Int64(lease, radix: 16))
            }
            records.append("$ etcdctl \(step.arguments.joined(separator: " "))\nexit \(result.status)\nout: \(clean(result.output))\nerr: \(clean(result.error))")
        }
        return records
    }

    @Test func etcdctlSequenceGivesEtcdsOutputsErrorsAndExitCodes() async throws {
        let reference = try await ReferenceEtcd.withServer { etcd in try await Self.transcript(etcd.endpoint) }
        let ours = try await withProxy { proxy in try await Self.transcript(proxy.endpoint) }
        #expect(ours.count == reference.count)
        for (theirs, mine) in zip(reference, ours) {
            #expect(mine == theirs)
        }
        // KV's unary calls through grpc-swift's own path (coordproxy's fast path off)
        // answer the same: both paths are held to etcd.
        let throughGRPCSwift = try await withProxy(fastPath: false) { proxy in try await Self.transcript(proxy.endpoint) }
        #expect(throughGRPCSwift.count == reference.count)
        for (theirs, mine) in zip(reference, throughGRPCSwift) {
            #expect(mine == theirs, "with the fast path off")
        }
        try Self.keep(reference, ours, as: "")
        // The comparison covers the error paths too, and no step failed on etcdctl's own usage.
        #expect(!reference.contains { $0.contains("unknown flag") })
        #expect(reference.contains { $0.contains("required revision has been compacted") })
        #expect(reference.contains { $0.contains("requested lease not found") })
        #expect(reference.contains { $0.contains("request is too large") })
        #expect(reference.contains { $0.contains("too many operations in txn request") })
        #expect(reference.contains { $0.contains("Finished defragmenting etcd member[<endpoint>]") })
        #expect(reference.contains { $0.contains("bad leader transferee") })
        #expect(reference.contains { $0.contains("Authentication Disabled") })
        #expect(reference.contains { $0.contains("root user does not exist") })
    }

    /// With `COORD_TRANSCRIPTS` set to a directory: both transcripts written there
    /// (`etcd<suffix>.txt`, `coordproxy<suffix>.txt`), to read a difference whole.
    static func keep(_ reference: [String], _ ours: [String], as suffix: String) throws {
        guard let directory = ProcessInfo.processInfo.environment["COORD_TRANSCRIPTS"] else { return }
        try reference.joined(separator: "\n\n").write(toFile: directory + "/etcd\(suffix).txt", atomically: true, encoding: .utf8)
        try ours.joined(separator: "\n\n").write(toFile: directory + "/coordproxy\(suffix).txt", atomically: true, encoding: .utf8)
    }

    /// Seeded random command sequences (see ``randomSteps(seed:count:)``): the same
    /// outputs, errors and exit codes from etcd 3.4 and coordproxy.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func seededRandomSequencesGiveEtcdsOutputs(seed: UInt64) async throws {
        let steps = Self.randomSteps(seed: seed, count: 40)
        let reference = try await ReferenceEtcd.withServer { etcd in try await Self.transcript(etcd.endpoint, steps: steps) }
        let ours = try await withProxy { proxy in try await Self.transcript(proxy.endpoint, steps: steps) }
        #expect(ours.count == reference.count)
        for (theirs, mine) in zip(reference, ours) {
            #expect(mine == theirs, "seed \(seed)")
        }
        try Self.keep(reference, ours, as: "-seed\(seed)")
        let misused = reference.filter { $0.contains("unknown flag") || $0.contains("Error: bad") }
        #expect(misused.isEmpty, "steps etcdctl refused as usage: \(misused)")
    }

    /// Results sorted on a target where several keys tie come with the ties in key
    /// order, both ways, as etcd's (Go's sort is stable up to 12 results; Lua's is not).
    @Test func sortedResultsKeepTiesInKeyOrderAsEtcdDoes() async throws {
        var steps = [["put", "a", "1"], ["put", "a/1", "1"], ["put", "a/2", "1"], ["put", "a/3", "1"], ["put", "a/4", "1"], ["put", "a/2", "2"]]
            .map { Step(arguments: $0) }
        for target in ["VERSION", "VALUE", "CREATE", "MODIFY"] {
            for order in ["ASCEND", "DESCEND"] {
                steps.append(Step(arguments: ["get", "a", "--prefix", "--sort-by=\(target)", "--order=\(order)", "--keys-only"]))
            }
        }
        let reference = try await ReferenceEtcd.withServer { etcd in try await Self.transcript(etcd.endpoint, steps: steps) }
        let ours = try await withProxy { proxy in try await Self.transcript(proxy.endpoint, steps: steps) }
        #expect(ours == reference)
        #expect(reference.contains { $0.contains("--sort-by=VERSION --order=DESCEND") && $0.contains("out: a/2\n\na\n\na/1\n\na/3\n\na/4") },
                "etcd did not keep the ties in key order: \(reference)")
    }

    /// The events etcdctl's `watch --prefix "" --rev <from> -w json` prints until one
    /// at revision `until` arrives: "PUT key value create mod version" per event.
    static func watchedEvents(_ endpoint: String, from: Int64, until: Int64) async throws -> [String] {
        let watcher = try Background(etcdctl: ["watch", "--prefix", "", "--rev", String(from), "-w", "json"], endpoint: endpoint)
        defer { watcher.signal(SIGKILL) }
        var events: [String] = []
        let deadline = ContinuousClock.now + .seconds(60)
        var seen = 0
        while ContinuousClock.now < deadline {
            let lines = watcher.printed
            for line in lines.dropFirst(seen) {
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
                var reached = false
                for event in object["Events"] as? [[String: Any]] ?? [] {
                    let kv = event["kv"] as? [String: Any] ?? [:]
                    func text(_ field: String) -> String {
                        (kv[field] as? String).flatMap { Data(base64Encoded: $0) }.map { String(decoding: $0, as: UTF8.self) } ?? ""
                    }
                    let number = { (field: String) in "\(kv[field] ?? 0)" }
                    events.append("\((event["type"] as? Int) == 1 || (event["type"] as? String) == "DELETE" ? "DELETE" : "PUT") \(text("key")) \(text("value")) \(number("create_revision")) \(number("mod_revision")) \(number("version"))")
                    if Int64(number("mod_revision")) ?? 0 >= until { reached = true }
                }
                // All events of a revision arrive together: stop after the whole response.
                if reached { return events }
            }
            seen = lines.count
            try await Task.sleep(for: .milliseconds(20))
        }
        return events
    }

    @Test func etcdctlWatchSeesTheSameEventsAsOnEtcd() async throws {
        // Writes from a watch-free history, then the complete stream from revision 2.
        let writes: [[String]] = [["put", "w/a", "1"], ["put", "w/b", "1"], ["put", "w/a", "2"], ["del", "w/b"],
                                  ["txn"], ["put", "w/c", "3"], ["del", "w/", "--prefix"]]
        func apply(_ endpoint: String) async throws -> [String] {
            for write in writes {
                let input = write == ["txn"] ? "\nput w/x 1\nput w/y 2\n\n\n" : ""
                #expect(try await etcdctl(write, endpoint: endpoint, input: input).status == 0)
            }
            return try await Self.watchedEvents(endpoint, from: 2, until: 8)
        }
        let reference = try await ReferenceEtcd.withServer { etcd in try await apply(etcd.endpoint) }
        let ours = try await withProxy { proxy in try await apply(proxy.endpoint) }
        #expect(reference.count == 11)
        #expect(ours == reference)
        // The watch stream through grpc-swift's own path (the fast path off) too.
        let throughGRPCSwift = try await withProxy(fastPath: false) { proxy in try await apply(proxy.endpoint) }
        #expect(throughGRPCSwift == reference, "with the fast path off")
    }
}

/// A small seeded generator (SplitMix64), so that a sequence is the same on every run.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A number in 0..<bound.
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}
