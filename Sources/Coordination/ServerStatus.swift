import RedisClient

/// The store's and the Redis server's state, as `coordctl endpoint status` shows it.
public struct ServerStatus: Sendable, Hashable {
    /// The store's current revision.
    public var revision: Int64
    /// The revision history is compacted at (0: never).
    public var compactRevision: Int64
    /// The Redis server's version.
    public var redisVersion: String
    /// `maxmemory-policy`.
    public var maxmemoryPolicy: String
    /// Whether the append-only file is on.
    public var appendOnly: Bool
    /// Whether RDB snapshots are configured (`save` is not empty), when the server says.
    public var rdbSnapshots: Bool?
    /// `notify-keyspace-events`, when CONFIG GET is allowed.
    public var keyspaceEvents: String?
    /// `appendfsync` (`always`, `everysec`, `no`), when CONFIG GET is allowed.
    public var appendFsync: String?
    /// The replicas connected to this master (INFO replication's `connected_slaves`).
    public var connectedReplicas: Int = 0
    /// Things that are allowed but risky, in words an operator can act on.
    public var warnings: [String]
}

extension CoordinationClient {
    /// The policies under which Redis may evict keys that have no TTL (the store's keys).
    static let evictingPolicies: Set<String> = ["allkeys-lru", "allkeys-lfu", "allkeys-random"]

    /// Reads the store's revision and the server's settings, and checks that the server
    /// is safe for coordination.
    ///
    /// - Parameter allowEvictingPolicy: accept an `allkeys-*` maxmemory-policy (reported
    ///   as a warning instead of an error).
    /// - Throws: ``CoordinationError/Code/unsafeConfiguration`` when Redis may evict the
    ///   store's keys; ``RedisError`` with ``RedisError/Code/noPermission`` naming the
    ///   command when the Redis user may not run what the store needs.
    public func status(allowEvictingPolicy: Bool = false) async throws -> ServerStatus {
        // The store script by EVALSHA is the first probe (compaction, the watch reader and
        // lease keep-alives run scripts, whether or not requests run as a Redis function):
        // NOPERM names EVALSHA or SCRIPT.
        let probe = Self.encodedRequest(.range(key: [0], options: RangeOptions()))
        _ = try Self.decodeScriptReply(try await redis.run(Self.kvScript, keys: keys, arguments: [probe], timeout: nil)).succeeded()
        let revision = try await currentRevision()
        let compactRevision = try await compactedRevision()
        // INFO is readable by most users, unlike CONFIG.
        let info = try await redis.send([Array("INFO".utf8)], timeout: nil).string ?? ""   // every section
        var fields: [Substring: Substring] = [:]
        for line in info.split(separator: "\r\n") {
            if let colon = line.firstIndex(of: ":") { fields[line[..<colon]] = line[line.index(after: colon)...] }
        }
        let policy = String(fields["maxmemory_policy"] ?? "unknown")
        let appendOnly = fields["aof_enabled"] == "1"
        var rdb: Bool?
        var events: String?
        if let save = try? await redis.send([Array("CONFIG".utf8), Array("GET".utf8), Array("save".utf8)], timeout: nil).array, save.count == 2 {
            rdb = !(save[1].string ?? "").isEmpty
        }
        if let notify = try? await redis.send([Array("CONFIG".utf8), Array("GET".utf8), Array("notify-keyspace-events".utf8)], timeout: nil).array, notify.count == 2 {
            events = notify[1].string
        }
        var fsync: String?
        if let policy = try? await redis.send([Array("CONFIG".utf8), Array("GET".utf8), Array("appendfsync".utf8)], timeout: nil).array, policy.count == 2 {
            fsync = policy[1].string
        }
        let replicas = Int(fields["connected_slaves"] ?? "") ?? 0
        var warnings: [String] = []
        if Self.evictingPolicies.contains(policy) {
            let message = "Redis maxmemory-policy is \(policy): under memory pressure Redis may evict coordination keys (locks, leases, history), silently breaking their guarantees; run CONFIG SET maxmemory-policy noeviction"
            guard allowEvictingPolicy else {
                throw CoordinationError(.unsafeConfiguration, message + ", or pass allowEvictingPolicy to accept the risk")
            }
            warnings.append(message)
        }
        if !appendOnly && rdb != true {
            warnings.append("Redis persistence is off (no appendonly, no RDB snapshots): a Redis restart loses the whole store; for durability run CONFIG SET appendonly yes")
        } else if !appendOnly {
            warnings.append("Redis persists only by RDB snapshots: a crash loses the writes since the last snapshot; CONFIG SET appendonly yes narrows that window")
        } else if let fsync, fsync != "always" {
            warnings.append("Redis appendfsync is \(fsync): a crash of the machine can lose the last \(fsync == "everysec" ? "second" : "seconds") of acknowledged writes (the store then reports storeReset to clients that saw them); CONFIG SET appendfsync always loses none")
        }
        var status = ServerStatus(revision: revision, compactRevision: compactRevision, redisVersion: String(fields["redis_version"] ?? "unknown"),
                                  maxmemoryPolicy: policy, appendOnly: appendOnly, rdbSnapshots: rdb, keyspaceEvents: events, warnings: warnings)
        status.appendFsync = fsync
        status.connectedReplicas = replicas
        return status
    }
}
