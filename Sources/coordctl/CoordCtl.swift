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
            (redis://[user:password@]host[:port][/db], unix:///path?db=N, or \
            redis-sentinel://host:26379,host2:26379/mymaster for the master Redis Sentinel names), default $REDIS_URL \
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
                      Compaction.self, Endpoint.self, Ping.self, Version.self]
    )

    /// Accepts the global flags before the subcommand too, as etcdctl does
    /// (`coordctl --endpoints=127.0.0.1:6379 get k`).
    static func main() async {
        await main(GlobalOptions.reordered(Array(CommandLine.arguments.dropFirst())))
    }
}

/// etcdctl's `version`.
struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Prints the version of coordctl and of the etcd API it follows.")
    static let number = "0.1.0"

    func run() {
        print("coordctl version: \(Self.number)")
        print("API version: 3.4")
    }
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

    @Option(help: ArgumentHelp("Timeout for connecting to Redis, as etcdctl's (2s, 500ms).", valueName: "duration"))
    var dialTimeout: String?

    @Option(help: ArgumentHelp("Timeout for each request, as etcdctl's (5s, 500ms).", valueName: "duration"))
    var commandTimeout: String?

    /// The store's Redis URL: --endpoints (the first of a comma-separated list; a bare
    /// host:port means redis://host:port), else $REDIS_URL, else redis://127.0.0.1:6379.
    var url: String {
        let given = endpoints ?? ProcessInfo.processInfo.environment["REDIS_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "redis://127.0.0.1:6379"
        let first = given.split(separator: ",").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? given
        return first.contains("://") ? first : "redis://" + first
    }

    /// The global options that may come before the subcommand, and whether each takes a value.
    static let leading: [String: Bool] = [
        "--endpoints": true, "--namespace": true, "-w": true, "--write-out": true, "--dial-timeout": true,
        "--command-timeout": true, "--allow-evicting-policy": false,
    ]

    /// `arguments` with the global options given before the subcommand moved to just
    /// after the subcommand's name (`lease grant`, `lock`), where ArgumentParser reads
    /// them: before any argument, so that a command to run (`lock name cmd ...`) keeps
    /// its own flags.
    static func reordered(_ arguments: [String]) -> [String] {
        var globals: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = argument.split(separator: "=", maxSplits: 1).first.map(String.init) ?? argument
            guard let takesValue = leading[name] else { break }
            globals.append(argument)
            if takesValue && !argument.contains("=") && index + 1 < arguments.count {
                globals.append(arguments[index + 1])
                index += 1
            }
            index += 1
        }
        guard !globals.isEmpty else { return arguments }
        var rest = Array(arguments[index...])
        var insertAt = rest.isEmpty ? 0 : 1
        if let command = rest.first, ["lease", "endpoint", "fortress"].contains(command), rest.count > 1, !rest[1].hasPrefix("-") {
            insertAt = 2
        }
        rest.insert(contentsOf: globals, at: insertAt)
        return rest
    }

    /// A duration as etcdctl writes them: 5s, 500ms, 1m, 1.5s.
    static func duration(_ text: String) throws -> Duration {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)), value >= 0 {
                return .milliseconds(Int64(value * scale * 1000))
            }
        }
        throw ValidationError("invalid duration \(text); write it as etcdctl does: 5s, 500ms, 1m")
    }

    var storeNamespace: String {
        namespace ?? ProcessInfo.processInfo.environment["COORD_NAMESPACE"].flatMap { $0.isEmpty ? nil : $0 } ?? "coord"
    }

    /// Connects, turning errors into messages etcdctl users recognise.
    func connect() async throws -> CoordinationClient {
        let dial = try dialTimeout.map(Self.duration)
        let command = try commandTimeout.map(Self.duration)
        do {
            guard dial != nil || command != nil else {
                return try await CoordinationClient.connect(url: url, namespace: storeNamespace, allowEvictingPolicy: allowEvictingPolicy)
            }
            var configuration = try RedisConfiguration(url: url)
            if let dial { configuration.connectTimeout = dial }
            if let command { configuration.commandTimeout = command }
            return try await CoordinationClient.connect(configuration, namespace: storeNamespace, allowEvictingPolicy: allowEvictingPolicy)
        } catch {
            throw CommandFailure(error)
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case simple, json, fields
}

/// An error printed as etcdctl prints them: "Error: <message>", exit code 1; an error
/// etcd has a message for starts with etcd's message (what scripts written for
/// etcdctl look for), coordctl's own detail after it in parentheses.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String

    init(_ error: any Error) {
        switch error {
        case let error as CoordinationError:
            description = error.etcdMessage.map { "\($0) (\(error.message))" } ?? error.message
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

    /// etcdctl's header: coordctl talks to Redis, not to a cluster member, so the
    /// cluster fields are 0.
    static func header(_ header: ResponseHeader) -> [String: Any] {
        ["cluster_id": 0, "member_id": 0, "revision": header.revision, "raft_term": 0]
    }

    /// etcdctl's JSON for lease answers: the header's fields at the top level.
    static func flattened(_ header: ResponseHeader, _ fields: [String: Any]) -> [String: Any] {
        self.header(header).merging(fields) { _, field in field }
    }

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
            case .range(let r): return ["Response": ["ResponseRange": rangeJSON(r)]]
            case .put(let p): return ["Response": ["ResponsePut": putJSON(p)]]
            case .delete(let d): return ["Response": ["ResponseDeleteRange": deleteJSON(d)]]
            case .txn(let t): return ["Response": ["ResponseTxn": txnJSON(t)]]
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
