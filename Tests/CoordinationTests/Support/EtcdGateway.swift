import Foundation
@testable import RedisClient

/// etcd v3's JSON gateway (`POST /v3/kv/range` and friends): byte fields in base64,
/// 64-bit integers as decimal strings, default values omitted.
struct EtcdGateway: Sendable {
    let baseURL: String

    /// A key-value pair as etcd reports it.
    struct KeyValue: Sendable, Hashable, CustomStringConvertible {
        var key: [UInt8]
        var value: [UInt8]
        var createRevision: Int64
        var modRevision: Int64
        var version: Int64
        var lease: Int64

        init(json: [String: Any]) {
            key = EtcdGateway.bytes(json["key"])
            value = EtcdGateway.bytes(json["value"])
            createRevision = EtcdGateway.int(json["create_revision"])
            modRevision = EtcdGateway.int(json["mod_revision"])
            version = EtcdGateway.int(json["version"])
            lease = EtcdGateway.int(json["lease"])
        }

        var description: String {
            "\(String(decoding: key, as: UTF8.self))=\(String(decoding: value, as: UTF8.self)) c\(createRevision) m\(modRevision) v\(version) l\(lease)"
        }
    }

    /// An error the gateway returned (`{"error": ..., "code": N}`, gRPC codes).
    struct Failure: Error, CustomStringConvertible {
        var code: Int
        var message: String
        var description: String { "etcd error \(code): \(message)" }
    }

    /// POSTs `body` as JSON to `path` (GET when `body` is nil) and returns the decoded object.
    func call(_ path: String, _ body: [String: Any]?) async throws -> [String: Any] {
        guard let port = baseURL.split(separator: ":").last.flatMap({ Int($0) }) else {
            throw Failure(code: -1, message: "no port in \(baseURL)")
        }
        let payload = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) } ?? []
        let (_, bytes) = try await LoopbackHTTP.request(port: port, method: body == nil ? "GET" : "POST", path: path, body: payload)
        let data = Data(bytes)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw Failure(code: -1, message: "not a JSON object: \(String(decoding: data, as: UTF8.self))")
        }
        if let message = object["error"] as? String {
            throw Failure(code: (object["code"] as? Int) ?? -1, message: message)
        }
        return object
    }

    /// The header revision of a response.
    static func revision(_ response: [String: Any]) -> Int64 {
        int((response["header"] as? [String: Any])?["revision"])
    }

    static func kvs(_ response: [String: Any], _ field: String = "kvs") -> [KeyValue] {
        ((response[field] as? [[String: Any]]) ?? []).map(KeyValue.init(json:))
    }

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    static func bytes(_ value: Any?) -> [UInt8] {
        guard let text = value as? String, let data = Data(base64Encoded: text) else { return [] }
        return Array(data)
    }

    static func int(_ value: Any?) -> Int64 {
        if let text = value as? String { return Int64(text) ?? 0 }
        if let number = value as? Int { return Int64(number) }
        return 0
    }

    // MARK: - Requests used by the tests

    func put(_ key: String, _ value: String, lease: Int64 = 0, prevKV: Bool = false) async throws -> [String: Any] {
        var body: [String: Any] = ["key": Self.base64(key), "value": Self.base64(value), "prev_kv": prevKV]
        if lease != 0 { body["lease"] = String(lease) }
        return try await call("/v3/kv/put", body)
    }

    func range(_ key: String, end: String? = nil, revision: Int64 = 0, limit: Int64 = 0, countOnly: Bool = false) async throws -> [String: Any] {
        var body: [String: Any] = ["key": Self.base64(key), "count_only": countOnly]
        if let end { body["range_end"] = Self.base64(end) }
        if revision != 0 { body["revision"] = String(revision) }
        if limit != 0 { body["limit"] = String(limit) }
        return try await call("/v3/kv/range", body)
    }

    func delete(_ key: String, end: String? = nil, prevKV: Bool = false) async throws -> [String: Any] {
        var body: [String: Any] = ["key": Self.base64(key), "prev_kv": prevKV]
        if let end { body["range_end"] = Self.base64(end) }
        return try await call("/v3/kv/deleterange", body)
    }

    func txn(compare: [[String: Any]], success: [[String: Any]], failure: [[String: Any]]) async throws -> [String: Any] {
        try await call("/v3/kv/txn", ["compare": compare, "success": success, "failure": failure])
    }

    func compact(_ revision: Int64) async throws -> [String: Any] {
        try await call("/v3/kv/compaction", ["revision": String(revision), "physical": true])
    }

    func grantLease(ttl: Int64, id: Int64 = 0) async throws -> [String: Any] {
        var body: [String: Any] = ["TTL": String(ttl)]
        if id != 0 { body["ID"] = String(id) }
        return try await call("/v3/lease/grant", body)
    }

    func revokeLease(_ id: Int64) async throws -> [String: Any] {
        try await call("/v3/lease/revoke", ["ID": String(id)])
    }
}

extension EtcdServer {
    /// The events etcdctl's `watch -w json` reports for every key from `revision` on,
    /// read until one with mod revision `until` arrives (or 10 s pass).
    func watchEvents(from revision: Int64, until: Int64) async throws -> [String] {
        guard let etcdctl = ChildProcess.locate("etcdctl") else {
            throw EtcdGateway.Failure(code: -1, message: "etcdctl not found; install etcd-client")
        }
        return try await withCheckedThrowingContinuation { continuation in
            // A thread of its own: blocking reads must not hold a cooperative-pool thread.
            Thread.detachNewThread {
                let process: PipedProcess
                do {
                    process = try PipedProcess(etcdctl, ["--endpoints", self.clientURL, "watch", "--prefix", "", "--rev", String(revision), "-w", "json"],
                                               environment: ["ETCDCTL_API": "3"], stdin: .null, stdout: .pipe, stderr: .null)
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let timer = DispatchWorkItem { process.terminate() }
                DispatchQueue.global().asyncAfter(deadline: .now() + 10, execute: timer)
                var buffer = Data()
                var events: [String] = []
                var done = false
                while !done {
                    let chunk = process.standardOutput?.availableData ?? Data()
                    if chunk.isEmpty { break }
                    buffer.append(chunk)
                    while let newline = buffer.firstIndex(of: 10) {
                        let line = buffer[buffer.startIndex..<newline]
                        buffer.removeSubrange(buffer.startIndex...newline)
                        guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] else { continue }
                        for event in (object["Events"] as? [[String: Any]]) ?? [] {
                            let kv = EtcdGateway.KeyValue(json: event["kv"] as? [String: Any] ?? [:])
                            let type = EtcdGateway.int(event["type"]) == 1 ? "DELETE" : "PUT"
                            events.append("\(type) \(Outcome.kv(kv.key, kv.value, kv.createRevision, kv.modRevision, kv.version, kv.lease))")
                            if kv.modRevision >= until { done = true }
                        }
                    }
                }
                timer.cancel()
                process.terminate()
                process.waitUntilExit()
                continuation.resume(returning: events)
            }
        }
    }
}
