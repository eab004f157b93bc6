import ArgumentParser
import Coordination
import Foundation

/// Parses a lease ID as etcdctl does: hexadecimal.
func parseLeaseID(_ text: String) throws -> Int64 {
    guard let value = UInt64(text, radix: 16) else { throw ValidationError("bad lease ID \(text): lease IDs are hexadecimal, as `lease grant` prints them") }
    return Int64(bitPattern: value)
}

struct Put: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Puts the given key into the store.",
        discussion: "With no value argument, the value is read from standard input.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The key.") var key: String
    @Argument(help: "The value (default: standard input).") var value: String?
    @Option(help: "Lease ID (in hexadecimal) to attach the key to.") var lease: String?
    @Flag(name: .customLong("prev-kv"), help: "Return the previous key-value pair.") var prevKV = false
    @Flag(name: .customLong("ignore-value"), help: "Update the key using its current value.") var ignoreValue = false
    @Flag(name: .customLong("ignore-lease"), help: "Update the key using its current lease.") var ignoreLease = false

    func run() async throws {
        try await running {
            var bytes: [UInt8] = []
            if let value { bytes = Array(value.utf8) } else if !ignoreValue {
                bytes = Array(FileHandle.standardInput.readDataToEndOfFile())
            }
            let options = PutOptions(lease: try lease.map(parseLeaseID) ?? 0, prevKV: prevKV, ignoreValue: ignoreValue, ignoreLease: ignoreLease)
            let store = try await global.connect()
            let response = try await store.put(Array(key.utf8), bytes, options: options)
            await store.close()
            switch global.writeOut {
            case .simple:
                print("OK")
                if let previous = response.prevKV { Printer.kv(previous) }
            case .json: Printer.json(Printer.putJSON(response))
            case .fields: Fields.put(response)
            }
        }
    }
}

struct RangeFlags: ParsableArguments {
    @Flag(help: "Get keys with matching prefix.") var prefix = false
    @Flag(name: .customLong("from-key"), help: "Get keys that are greater than or equal to the given key (byte order).") var fromKey = false

    /// The key to send: as clientv3's WithPrefix and WithFromKey, an empty key with
    /// either means every key ("\0").
    func key(_ key: String) -> [UInt8] {
        key.isEmpty && (prefix || fromKey) ? [0] : Array(key.utf8)
    }

    func rangeEnd(for key: String, end: String?) -> [UInt8] {
        if prefix && key.isEmpty { return [0] }
        if prefix { return RangeOptions.prefixEnd(Array(key.utf8)) }
        if fromKey { return [0] }
        return end.map { Array($0.utf8) } ?? []
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Gets the key or a range of keys.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var range: RangeFlags
    @Argument(help: "The key.") var key: String
    @Argument(help: "End of the range, exclusive.") var rangeEnd: String?
    @Option(help: "Maximum number of results.") var limit: Int64 = 0
    @Option(help: "Revision to read at (0: current).") var rev: Int64 = 0
    @Option(name: .customLong("sort-by"), help: "Sort target: CREATE, KEY, MODIFY, VALUE or VERSION.") var sortBy: String = "KEY"
    @Option(help: "Order: ASCEND or DESCEND.") var order: String?
    @Flag(name: .customLong("keys-only"), help: "Get only the keys.") var keysOnly = false
    @Flag(name: .customLong("count-only"), help: "Get only the count.") var countOnly = false
    @Flag(name: .customLong("print-value-only"), help: "Only write values (simple output).") var printValueOnly = false

    func run() async throws {
        try await running {
            var options = RangeOptions(rangeEnd: range.rangeEnd(for: key, end: rangeEnd), limit: limit, revision: rev, keysOnly: keysOnly, countOnly: countOnly)
            switch sortBy.uppercased() {
            case "KEY": options.sortTarget = .key
            case "CREATE": options.sortTarget = .create
            case "MODIFY": options.sortTarget = .mod
            case "VALUE": options.sortTarget = .value
            case "VERSION": options.sortTarget = .version
            default: throw ValidationError("bad sort target \(sortBy): use CREATE, KEY, MODIFY, VALUE or VERSION")
            }
            switch order?.uppercased() {
            case nil: options.sortOrder = .none
            case "ASCEND": options.sortOrder = .ascend
            case "DESCEND": options.sortOrder = .descend
            default: throw ValidationError("bad sort order \(order ?? ""): use ASCEND or DESCEND")
            }
            let store = try await global.connect()
            let response = try await store.get(range.key(key), options: options)
            await store.close()
            switch global.writeOut {
            case .simple:
                if countOnly { print(response.count) }
                for pair in response.kvs { Printer.kv(pair, valueOnly: printValueOnly, keysOnly: keysOnly) }
            case .json: Printer.json(Printer.rangeJSON(response))
            case .fields: Fields.range(response)
            }
        }
    }
}

struct Del: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Removes the specified key or range of keys [key, range_end).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var range: RangeFlags
    @Argument(help: "The key.") var key: String
    @Argument(help: "End of the range, exclusive.") var rangeEnd: String?
    @Flag(name: .customLong("prev-kv"), help: "Return deleted key-value pairs.") var prevKV = false

    func run() async throws {
        try await running {
            let store = try await global.connect()
            let response = try await store.delete(range.key(key), rangeEnd: range.rangeEnd(for: key, end: rangeEnd), prevKV: prevKV)
            await store.close()
            switch global.writeOut {
            case .simple:
                print(response.deleted)
                for pair in response.prevKVs { Printer.kv(pair) }
            case .json: Printer.json(Printer.deleteJSON(response))
            case .fields: Fields.delete(response)
            }
        }
    }
}

struct Compaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Compacts the event history in the store.",
                                                    discussion: "Reads at revisions below <revision> fail with 'compacted' afterwards.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The revision to compact at.") var revision: Int64
    @Flag(help: "Accepted for etcdctl compatibility; compaction always completes before returning.") var physical = false

    func run() async throws {
        try await running {
            let store = try await global.connect()
            try await store.compact(revision)
            await store.close()
            print("compacted revision \(revision)")
        }
    }
}

struct Endpoint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Endpoint related commands.", subcommands: [Status.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Prints the store's revision and the Redis server's settings and warnings.")

        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await running {
                let store = try await global.connect()
                let status = try await store.status(allowEvictingPolicy: global.allowEvictingPolicy)
                await store.close()
                switch global.writeOut {
                case .simple, .fields:
                    print("\(RedisConfigurationText.redacted(global.url)), namespace \(global.storeNamespace), revision \(status.revision), compacted at \(status.compactRevision), redis \(status.redisVersion), maxmemory-policy \(status.maxmemoryPolicy), appendonly \(status.appendOnly ? "yes" : "no"), appendfsync \(status.appendFsync ?? "unknown"), replicas \(status.connectedReplicas)")
                case .json:
                    // etcdctl's shape (an array, one entry per endpoint), with Redis's
                    // facts beside etcd's fields.
                    let entry: [String: Any] = [
                        "Endpoint": RedisConfigurationText.redacted(global.url),
                        "Status": [
                            "header": Printer.header(ResponseHeader(revision: status.revision)),
                            "version": "3.4.0", "raftIndex": status.revision, "raftAppliedIndex": status.revision,
                            "namespace": global.storeNamespace, "compact_revision": status.compactRevision,
                            "redis_version": status.redisVersion, "maxmemory_policy": status.maxmemoryPolicy,
                            "appendonly": status.appendOnly, "appendfsync": status.appendFsync ?? "unknown",
                            "replicas": status.connectedReplicas, "warnings": status.warnings,
                        ] as [String: Any],
                    ]
                    let data = (try? JSONSerialization.data(withJSONObject: [entry], options: [.sortedKeys])) ?? Data("[]".utf8)
                    Printer.line(Array(data))
                }
                for warning in status.warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
            }
        }
    }
}

enum RedisConfigurationText {
    static func redacted(_ url: String) -> String {
        (try? RedisConfiguration(url: url))?.redactedURL ?? url
    }
}
