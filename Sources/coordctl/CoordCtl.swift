import ArgumentParser
import Coordination
import Foundation

/// coordctl: an etcdctl lookalike for the Redis-backed store.
@main
struct CoordCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordctl",
        abstract: "An etcdctl (v3.4) lookalike for etcd semantics stored in Redis.",
        discussion: """
            The store lives in a Redis database; --endpoints takes its URL \
            (redis://[user:password@]host[:port][/db] or unix:///path?db=N), default $REDIS_URL \
            or redis://127.0.0.1:6379. --namespace (default $COORD_NAMESPACE or "coord") picks \
            one independent store inside it.

            Examples:
              coordctl put greeting hello
              coordctl get greeting -w json
              coordctl get --prefix config/ --sort-by=MODIFY --order=DESCEND
              coordctl lease grant 30
              coordctl watch --prefix config/ --rev 1
              coordctl endpoint status
              coordctl lock reports -- ./make-report.sh
              coordctl elect scheduler node-1
            """,
        subcommands: [Put.self, Get.self, Del.self, TxnCommand.self, WatchCommand.self, LeaseCommand.self,
                      LockCommand.self, ElectCommand.self, FortressCommand.self,
                      Compaction.self, Endpoint.self, Ping.self]
    )
}

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(help: "Redis URL of the store (default: $REDIS_URL, else redis://127.0.0.1:6379).")
    var endpoints: String?

    @Option(help: "The store inside the Redis database (default: $COORD_NAMESPACE, else coord).")
    var namespace: String?

    @Option(name: [.customShort("w"), .customLong("write-out")], help: "Output format: simple, json or fields.")
    var writeOut: OutputFormat = .simple

    @Flag(help: "Accept a Redis maxmemory-policy that can evict the store's keys.")
    var allowEvictingPolicy = false

    var url: String {
        endpoints ?? ProcessInfo.processInfo.environment["REDIS_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "redis://127.0.0.1:6379"
    }

    var storeNamespace: String {
        namespace ?? ProcessInfo.processInfo.environment["COORD_NAMESPACE"].flatMap { $0.isEmpty ? nil : $0 } ?? "coord"
    }

    /// Connects, turning errors into messages etcdctl users recognise.
    func connect() async throws -> CoordinationClient {
        do {
            return try await CoordinationClient.connect(url: url, namespace: storeNamespace, allowEvictingPolicy: allowEvictingPolicy)
        } catch {
            throw CommandFailure(error)
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case simple, json, fields
}

/// An error printed as etcdctl prints them: "Error: <message>", exit code 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String

    init(_ error: any Error) {
        switch error {
        case let error as CoordinationError: description = error.message
        case let error as RedisError: description = error.message
        default: description = "\(error)"
        }
    }

    init(message: String) { description = message }
}

/// Runs `body` and prints its failure as etcdctl does ("Error: ..." on stderr, exit 1).
func running(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as CleanExit {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch {
        let failure = (error as? CommandFailure) ?? CommandFailure(error)
        FileHandle.standardError.write(Data("Error: \(failure.description)\n".utf8))
        throw ExitCode(1)
    }
}

// MARK: - Printing

enum Printer {
    /// Writes raw bytes and a newline (values are not always UTF-8), after flushing
    /// what `print` buffered, so that the output keeps its order when piped.
    static func line(_ bytes: [UInt8]) {
        fflush(nil)  // flushes every C stream, stdout included
        FileHandle.standardOutput.write(Data(bytes + [10]))
    }

    static func kv(_ pair: KeyValue, valueOnly: Bool = false, keysOnly: Bool = false) {
        if !valueOnly { line(pair.key) }
        if !keysOnly { line(pair.value) }
    }

    static func json(_ object: [String: Any]) {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        line(Array(data))
    }

    static func header(_ header: ResponseHeader) -> [String: Any] { ["revision": header.revision] }

    static func kvJSON(_ pair: KeyValue) -> [String: Any] {
        var object: [String: Any] = ["key": Data(pair.key).base64EncodedString(), "create_revision": pair.createRevision,
                                     "mod_revision": pair.modRevision, "version": pair.version]
        if !pair.value.isEmpty { object["value"] = Data(pair.value).base64EncodedString() }
        if pair.lease != 0 { object["lease"] = pair.lease }
        return object
    }

    static func rangeJSON(_ response: RangeResponse) -> [String: Any] {
        var object: [String: Any] = ["header": header(response.header)]
        if !response.kvs.isEmpty { object["kvs"] = response.kvs.map(kvJSON) }
        if response.more { object["more"] = true }
        if response.count != 0 { object["count"] = response.count }
        return object
    }

    static func putJSON(_ response: PutResponse) -> [String: Any] {
        var object: [String: Any] = ["header": header(response.header)]
        if let previous = response.prevKV { object["prev_kv"] = kvJSON(previous) }
        return object
    }

    static func deleteJSON(_ response: DeleteResponse) -> [String: Any] {
        var object: [String: Any] = ["header": header(response.header)]
        if response.deleted != 0 { object["deleted"] = response.deleted }
        if !response.prevKVs.isEmpty { object["prev_kvs"] = response.prevKVs.map(kvJSON) }
        return object
    }

    static func txnJSON(_ response: TxnResponse) -> [String: Any] {
        var object: [String: Any] = ["header": header(response.header)]
        if response.succeeded { object["succeeded"] = true }
        object["responses"] = response.responses.map { item -> [String: Any] in
            switch item {
            case .range(let r): return ["Response": ["response_range": rangeJSON(r)]]
            case .put(let p): return ["Response": ["response_put": putJSON(p)]]
            case .delete(let d): return ["Response": ["response_delete_range": deleteJSON(d)]]
            case .txn(let t): return ["Response": ["response_txn": txnJSON(t)]]
            }
        }
        return object
    }

    static func leaseID(_ id: Int64) -> String {
        let hex = String(UInt64(bitPattern: id), radix: 16)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex
    }
}

/// etcdctl's `-w fields` output: one `"Name" : value` line per field.
enum Fields {
    static func header(_ header: ResponseHeader) {
        print("\"ClusterID\" : 0")
        print("\"MemberID\" : 0")
        print("\"Revision\" : \(header.revision)")
        print("\"RaftTerm\" : 0")
    }

    static func kv(_ pair: KeyValue, prefix: String = "") {
        print("\"\(prefix)Key\" : \(quote(pair.key))")
        print("\"\(prefix)CreateRevision\" : \(pair.createRevision)")
        print("\"\(prefix)ModRevision\" : \(pair.modRevision)")
        print("\"\(prefix)Version\" : \(pair.version)")
        print("\"\(prefix)Value\" : \(quote(pair.value))")
        print("\"\(prefix)Lease\" : \(pair.lease)")
    }

    static func lease(_ header: ResponseHeader, id: Int64, ttl: Int64) {
        self.header(header)
        print("\"ID\" : \(id)")
        print("\"TTL\" : \(ttl)")
    }

    static func range(_ response: RangeResponse) {
        header(response.header)
        for pair in response.kvs { kv(pair) }
        print("\"More\" : \(response.more)")
        print("\"Count\" : \(response.count)")
    }

    static func put(_ response: PutResponse) {
        header(response.header)
        if let previous = response.prevKV { kv(previous, prefix: "Prev") }
    }

    static func delete(_ response: DeleteResponse) {
        header(response.header)
        print("\"Deleted\" : \(response.deleted)")
        for pair in response.prevKVs { kv(pair, prefix: "Prev") }
    }

    static func txn(_ response: TxnResponse) {
        header(response.header)
        print("\"Succeeded\" : \(response.succeeded)")
        for item in response.responses {
            switch item {
            case .range(let r): range(r)
            case .put(let p): put(p)
            case .delete(let d): delete(d)
            case .txn(let t): txn(t)
            }
        }
    }

    /// Go's %q: printable ASCII as is, `"` and `\\` escaped, the rest as \n, \t, \xNN.
    static func quote(_ bytes: [UInt8]) -> String {
        var text = "\""
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""): text += "\\\""
            case UInt8(ascii: "\\"): text += "\\\\"
            case 10: text += "\\n"
            case 9: text += "\\t"
            case 13: text += "\\r"
            case 0x20...0x7e: text.append(Character(UnicodeScalar(byte)))
            default: text += String(format: "\\x%02x", byte)
            }
        }
        return text + "\""
    }
}

/// `coordctl ping`: connects, authenticates and reports the round trip.
struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Connect to Redis and report the round-trip time of PING.")

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await running {
            let connection = try await RedisConnection.connect(url: global.url)
            let clock = ContinuousClock()
            var reply = RedisReply.null
            let elapsed = try await clock.measure { reply = try await connection.send("PING") }
            print("\(connection.configuration.redactedURL) is healthy: \(reply) in \(elapsed)")
            await connection.close()
        }
    }
}
