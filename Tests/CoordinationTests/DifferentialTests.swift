import Coordination
import Foundation
import Testing

/// The same seeded random sequence of KV requests against etcd 3.4 and against the
/// Redis-backed store: every response must be identical (revisions, versions,
/// create/mod revisions, values, counts, `more`, previous pairs, txn outcomes, errors).
@Suite(.serialized) struct DifferentialTests {
    static let seeds = Array(1...20)
    /// 200 in CI; set DIFF_OPS for a longer local run.
    static let operationsPerSeed = ProcessInfo.processInfo.environment["DIFF_OPS"].flatMap { Int($0) } ?? 200

    @Test(arguments: seeds)
    func randomKVSequencesMatchEtcd(seed: Int) async throws {
        try await EtcdServer.withServer { server, etcd in
            try await RedisServer.withServer { redis in
                let connection = try await RedisConnection.connect(redis.configuration)
                let store = CoordinationClient(redis: connection, namespace: "diff\(seed)")
                var generator = OperationGenerator(seed: UInt64(seed))
                for step in 0..<Self.operationsPerSeed {
                    if generator.random(25) == 0 {
                        // Compaction at a random revision, valid or not, in small chunks.
                        let target = Int64(generator.random(Int(generator.revision) + 1) + 1)
                        let expected = await EtcdTranslation.compact(target, on: etcd)
                        let actual = await StoreTranslation.compact(target, on: store)
                        #expect(actual == expected, "seed \(seed) step \(step): compact \(target)")
                        if actual != expected { break }
                    }
                    if generator.random(12) == 0 {
                        // Lease grant (with an ID, so both stores agree) or revoke.
                        let id = Int64(generator.random(3) + 1)
                        let grant = generator.random(2) == 0
                        let expected = await EtcdTranslation.lease(grant: grant, id: id, on: etcd)
                        let actual = await StoreTranslation.lease(grant: grant, id: id, on: store)
                        #expect(actual == expected, "seed \(seed) step \(step): \(grant ? "grant" : "revoke") \(id)")
                        if actual != expected { break }
                        generator.observe(revision: expected.revision)
                    }
                    let operation = generator.next()
                    let expected = await EtcdTranslation.run(operation, on: etcd)
                    let actual = await StoreTranslation.run(operation, on: store)
                    // DIFF_TRACE=<seed> prints every step of that seed, for debugging a mismatch.
                    if ProcessInfo.processInfo.environment["DIFF_TRACE"] == "\(seed)" { print("step \(step): \(operation)\n  etcd \(expected)\n  ours \(actual)") }
                    #expect(actual == expected, "seed \(seed) step \(step): \(operation)")
                    if actual != expected { break }
                    generator.observe(revision: expected.revision)
                }
                // The complete watch stream, from the oldest revision history still has.
                let compacted = try await connection.send("GET", "{diff\(seed)}:compact").int ?? 0
                let last = try await store.get([0]).header.revision
                if last > max(compacted, 1) {
                    let start = max(compacted, 1)
                    let etcdEvents = try await server.watchEvents(from: start, until: last)
                    let stream = store.watch([0], options: WatchOptions(rangeEnd: [0], startRevision: start))
                    let ours = try await collect(stream, events: etcdEvents.count).flatMap(\.events).map { event in
                        "\(event.kind == .put ? "PUT" : "DELETE") " + Outcome.kv(event.kv.key, event.kv.value, event.kv.createRevision, event.kv.modRevision, event.kv.version, event.kv.lease)
                    }
                    #expect(etcdEvents.last?.contains(" m\(last) ") == true, "etcd's watch stream did not reach revision \(last)")
                    #expect(ours == etcdEvents, "seed \(seed): watch streams from revision \(start) differ")
                }
                await store.close()
                await connection.close()
            }
        }
    }
}

/// Seeded random operations over a small key space, so that keys collide often.
struct OperationGenerator {
    private var state: UInt64
    private(set) var revision: Int64 = 1
    let keys = ["a", "b", "c", "d", "a/1", "a/2", "b/1"]

    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 }

    mutating func random(_ bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(bound))
    }

    mutating func observe(revision: Int64?) {
        if let revision { self.revision = max(self.revision, revision) }
    }

    private mutating func key() -> [UInt8] { Array(keys[random(keys.count)].utf8) }
    private mutating func value() -> [UInt8] { Array("v\(random(4))".utf8) }

    private mutating func rangeEnd(for key: [UInt8]) -> [UInt8] {
        switch random(4) {
        case 0: return []
        case 1: return RangeOptions.prefixEnd(key)
        case 2: return [0]
        default: return Array(keys[random(keys.count)].utf8)
        }
    }

    private mutating func rangeOperation() -> KVOperation {
        let key = key()
        var options = RangeOptions(rangeEnd: rangeEnd(for: key))
        if random(3) == 0 { options.limit = Int64(random(3) + 1) }
        if random(4) == 0 { options.revision = Int64(random(Int(revision) + 2)) }
        if random(5) == 0 { options.sortOrder = random(2) == 0 ? .ascend : .descend }
        if random(8) == 0 { options.countOnly = true }
        if random(8) == 0 { options.keysOnly = true }
        return .range(key: key, options: options)
    }

    private mutating func writeOperation() -> KVOperation {
        if random(3) == 0 {
            let key = key()
            return .delete(key: key, rangeEnd: random(2) == 0 ? [] : rangeEnd(for: key), prevKV: random(2) == 0)
        }
        let lease: Int64 = random(4) == 0 ? Int64(random(3) + 1) : 0
        return .put(key: key(), value: value(), options: PutOptions(lease: lease, prevKV: random(2) == 0))
    }

    private mutating func compare() -> Compare {
        let key = key()
        let result: Compare.Result = [.equal, .notEqual, .less, .greater][random(4)]
        switch random(4) {
        case 0: return Compare(key: key, .value(value()), result)
        case 1: return Compare(key: key, .version(Int64(random(3))), result)
        case 2: return Compare(key: key, .createRevision(Int64(random(Int(revision) + 1))), result)
        default: return Compare(key: key, .modRevision(Int64(random(Int(revision) + 1))), result)
        }
    }

    private mutating func branch(depth: Int) -> [KVOperation] {
        (0..<random(3)).map { _ in
            switch random(depth > 0 ? 3 : 4) {
            case 0: return rangeOperation()
            case 3: return .txn(txn(depth: depth + 1))
            default: return writeOperation()
            }
        }
    }

    private mutating func txn(depth: Int) -> Txn {
        Txn(compares: (0..<random(3)).map { _ in compare() }, success: branch(depth: depth), failure: branch(depth: depth))
    }

    mutating func next() -> KVOperation {
        switch random(10) {
        case 0..<3: return rangeOperation()
        case 3..<7: return writeOperation()
        default: return .txn(txn(depth: 0))
        }
    }
}

/// A response reduced to what both stores must agree on.
struct Outcome: Equatable, CustomStringConvertible {
    var revision: Int64?
    var error: String?
    var detail: [String]

    var description: String {
        if let error { return "error \(error)" }
        return "revision \(revision ?? -1)\n  " + detail.joined(separator: "\n  ")
    }

    static func kv(_ key: [UInt8], _ value: [UInt8], _ create: Int64, _ mod: Int64, _ version: Int64, _ lease: Int64) -> String {
        "\(String(decoding: key, as: UTF8.self))=\(String(decoding: value, as: UTF8.self)) c\(create) m\(mod) v\(version) l\(lease)"
    }

    /// Errors by kind, from either store's wording.
    static func errorKind(_ message: String) -> String {
        for (needle, kind) in [("future revision", "futureRevision"), ("futureRevision", "futureRevision"), ("compacted", "compacted"),
                               ("duplicate key", "duplicateKey"), ("duplicateKey", "duplicateKey"), ("lease not found", "leaseNotFound"),
                               ("leaseNotFound", "leaseNotFound"), ("lease already exists", "leaseExists"), ("leaseExists", "leaseExists"), ("key not found", "keyNotFound"), ("keyNotFound", "keyNotFound"),
                               ("key is not provided", "emptyKey"), ("emptyKey", "emptyKey"), ("too many operations", "tooManyOps")]
            where message.contains(needle) {
            return kind
        }
        return message
    }
}

enum StoreTranslation {
    static func lease(grant: Bool, id: Int64, on store: CoordinationClient) async -> Outcome {
        do {
            if grant {
                let response = try await store.grantLease(ttl: 600, id: id)
                return Outcome(revision: response.header.revision, detail: ["grant \(response.id) \(response.ttl)"])
            }
            return Outcome(revision: try await store.revokeLease(id).revision, detail: ["revoke"])
        } catch let error as CoordinationError {
            return Outcome(revision: nil, error: Outcome.errorKind(error.code.description), detail: [])
        } catch {
            return Outcome(revision: nil, error: "\(error)", detail: [])
        }
    }

    static func compact(_ revision: Int64, on store: CoordinationClient) async -> Outcome {
        do {
            let header = try await store.compact(revision, chunk: 3)
            return Outcome(revision: header.revision, detail: ["compact"])
        } catch let error as CoordinationError {
            return Outcome(revision: nil, error: Outcome.errorKind(error.code.description), detail: [])
        } catch {
            return Outcome(revision: nil, error: "\(error)", detail: [])
        }
    }

    static func run(_ operation: KVOperation, on store: CoordinationClient) async -> Outcome {
        do {
            switch operation {
            case .range(let key, let options):
                let response = try await store.get(key, options: options)
                return Outcome(revision: response.header.revision, detail: lines(.range(response)))
            case .put(let key, let value, let options):
                let response = try await store.put(key, value, options: options)
                return Outcome(revision: response.header.revision, detail: lines(.put(response)))
            case .delete(let key, let rangeEnd, let prevKV):
                let response = try await store.delete(key, rangeEnd: rangeEnd, prevKV: prevKV)
                return Outcome(revision: response.header.revision, detail: lines(.delete(response)))
            case .txn(let txn):
                let response = try await store.txn(txn)
                return Outcome(revision: response.header.revision, detail: lines(.txn(response)))
            }
        } catch let error as CoordinationError {
            return Outcome(revision: nil, error: Outcome.errorKind(error.code.description), detail: [])
        } catch {
            return Outcome(revision: nil, error: "\(error)", detail: [])
        }
    }

    static func lines(_ response: OperationResponse) -> [String] {
        func kv(_ pair: KeyValue) -> String { Outcome.kv(pair.key, pair.value, pair.createRevision, pair.modRevision, pair.version, pair.lease) }
        switch response {
        case .range(let r): return ["range count \(r.count) more \(r.more)"] + r.kvs.map(kv)
        case .put(let p): return ["put prev " + (p.prevKV.map(kv) ?? "none")]
        case .delete(let d): return ["delete \(d.deleted)"] + d.prevKVs.map(kv)
        case .txn(let t): return ["txn \(t.succeeded)"] + t.responses.flatMap(lines)
        }
    }
}

enum EtcdTranslation {
    typealias JSON = [String: Any]

    static func lease(grant: Bool, id: Int64, on etcd: EtcdGateway) async -> Outcome {
        do {
            if grant {
                let response = try await etcd.grantLease(ttl: 600, id: id)
                if let error = response["error"] as? String, !error.isEmpty { return Outcome(revision: nil, error: Outcome.errorKind(error), detail: []) }
                return Outcome(revision: EtcdGateway.revision(response), detail: ["grant \(EtcdGateway.int(response["ID"])) \(EtcdGateway.int(response["TTL"]))"])
            }
            return Outcome(revision: EtcdGateway.revision(try await etcd.revokeLease(id)), detail: ["revoke"])
        } catch let failure as EtcdGateway.Failure {
            return Outcome(revision: nil, error: Outcome.errorKind(failure.message), detail: [])
        } catch {
            return Outcome(revision: nil, error: "\(error)", detail: [])
        }
    }

    static func compact(_ revision: Int64, on etcd: EtcdGateway) async -> Outcome {
        do {
            let response = try await etcd.compact(revision)
            return Outcome(revision: EtcdGateway.revision(response), detail: ["compact"])
        } catch let failure as EtcdGateway.Failure {
            return Outcome(revision: nil, error: Outcome.errorKind(failure.message), detail: [])
        } catch {
            return Outcome(revision: nil, error: "\(error)", detail: [])
        }
    }

    static func run(_ operation: KVOperation, on etcd: EtcdGateway) async -> Outcome {
        do {
            let (path, body) = request(operation)
            let response = try await etcd.call(path, body)
            return Outcome(revision: EtcdGateway.revision(response), detail: lines(operation, response))
        } catch let failure as EtcdGateway.Failure {
            return Outcome(revision: nil, error: Outcome.errorKind(failure.message), detail: [])
        } catch {
            return Outcome(revision: nil, error: "\(error)", detail: [])
        }
    }

    static func b64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func body(_ operation: KVOperation) -> JSON {
        switch operation {
        case .range(let key, let o):
            var body: JSON = ["key": b64(key), "keys_only": o.keysOnly, "count_only": o.countOnly,
                              "sort_order": o.sortOrder.rawValue.uppercased(), "sort_target": o.sortTarget.rawValue.uppercased()]
            if !o.rangeEnd.isEmpty { body["range_end"] = b64(o.rangeEnd) }
            if o.limit != 0 { body["limit"] = String(o.limit) }
            if o.revision != 0 { body["revision"] = String(o.revision) }
            return body
        case .put(let key, let value, let o):
            var body: JSON = ["key": b64(key), "value": b64(value), "prev_kv": o.prevKV, "ignore_value": o.ignoreValue, "ignore_lease": o.ignoreLease]
            if o.lease != 0 { body["lease"] = String(o.lease) }
            return body
        case .delete(let key, let rangeEnd, let prevKV):
            var body: JSON = ["key": b64(key), "prev_kv": prevKV]
            if !rangeEnd.isEmpty { body["range_end"] = b64(rangeEnd) }
            return body
        case .txn(let txn):
            let compares: [JSON] = txn.compares.map { compare in
                var json: JSON = ["key": b64(compare.key),
                                  "result": ["=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"][compare.result.rawValue]!]
                if !compare.rangeEnd.isEmpty { json["range_end"] = b64(compare.rangeEnd) }
                switch compare.target {
                case .value(let value): json["target"] = "VALUE"; json["value"] = b64(value)
                case .version(let version): json["target"] = "VERSION"; json["version"] = String(version)
                case .createRevision(let revision): json["target"] = "CREATE"; json["create_revision"] = String(revision)
                case .modRevision(let revision): json["target"] = "MOD"; json["mod_revision"] = String(revision)
                case .lease(let lease): json["target"] = "LEASE"; json["lease"] = String(lease)
                }
                return json
            }
            return ["compare": compares, "success": txn.success.map(requestOp), "failure": txn.failure.map(requestOp)]
        }
    }

    static func requestOp(_ operation: KVOperation) -> JSON {
        switch operation {
        case .range: return ["request_range": body(operation)]
        case .put: return ["request_put": body(operation)]
        case .delete: return ["request_delete_range": body(operation)]
        case .txn: return ["request_txn": body(operation)]
        }
    }

    static func request(_ operation: KVOperation) -> (String, JSON) {
        switch operation {
        case .range: return ("/v3/kv/range", body(operation))
        case .put: return ("/v3/kv/put", body(operation))
        case .delete: return ("/v3/kv/deleterange", body(operation))
        case .txn: return ("/v3/kv/txn", body(operation))
        }
    }

    static func kv(_ json: JSON) -> String {
        let pair = EtcdGateway.KeyValue(json: json)
        return Outcome.kv(pair.key, pair.value, pair.createRevision, pair.modRevision, pair.version, pair.lease)
    }

    static func lines(_ operation: KVOperation, _ response: JSON) -> [String] {
        switch operation {
        case .range:
            let kvs = (response["kvs"] as? [JSON]) ?? []
            return ["range count \(EtcdGateway.int(response["count"])) more \(response["more"] as? Bool ?? false)"] + kvs.map(kv)
        case .put:
            return ["put prev " + ((response["prev_kv"] as? JSON).map(kv) ?? "none")]
        case .delete:
            let previous = (response["prev_kvs"] as? [JSON]) ?? []
            return ["delete \(EtcdGateway.int(response["deleted"]))"] + previous.map(kv)
        case .txn(let txn):
            let succeeded = response["succeeded"] as? Bool ?? false
            let branch = succeeded ? txn.success : txn.failure
            let responses = (response["responses"] as? [JSON]) ?? []
            var result = ["txn \(succeeded)"]
            for (inner, item) in zip(branch, responses) {
                let payload = (item["response_range"] ?? item["response_put"] ?? item["response_delete_range"] ?? item["response_txn"]) as? JSON ?? [:]
                result += lines(inner, payload)
            }
            return result
        }
    }
}
