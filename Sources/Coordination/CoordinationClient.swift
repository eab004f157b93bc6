import RedisClient
import ServiceLifecycle
import Synchronization

/// An etcd-like store inside one Redis database: revisions, versions, reads at older
/// revisions and multi-key transactions with etcd 3.4's semantics.
///
/// A *namespace* is one independent store; every Redis key of it carries the hash tag
/// `{namespace}`, so that it lives in one Redis Cluster slot and every script touches
/// one slot. Each request runs as one Lua script (`lua/kv.lua`), so it is atomic.
///
/// ```swift
/// let store = try await CoordinationClient.connect(url: "redis://localhost:6379")
/// let put = try await store.put("config/a", "1")          // put.header.revision == 2 on a new store
/// let all = try await store.get("config/", options: .prefix(Array("config/".utf8)))
/// ```
public final class CoordinationClient: Sendable {
    /// Limits checked before a request reaches Redis (etcd's defaults).
    public struct Limits: Sendable, Hashable {
        /// The largest value accepted (etcd: 1.5 MiB request size).
        public var maxValueBytes = 1_572_864
        /// The most operations in one transaction (etcd: 128).
        public var maxTxnOps = 128

        public init(maxValueBytes: Int = 1_572_864, maxTxnOps: Int = 128) {
            self.maxValueBytes = maxValueBytes
            self.maxTxnOps = maxTxnOps
        }
    }

    /// How many Redis replicas must have a write before the client reports it done.
    public struct Durability: Sendable, Hashable {
        /// Replicas that must acknowledge each write (Redis's `WAIT numreplicas`).
        public var replicas: Int
        /// How long to wait for them; past it the write's outcome is unknown.
        public var timeout: Duration

        public init(replicas: Int, timeout: Duration = .seconds(1)) {
            self.replicas = replicas
            self.timeout = timeout
        }

        /// `WAIT replicas timeout-ms`: for the writes the connection sent so far.
        var waitCommand: [[UInt8]] {
            let (seconds, attoseconds) = timeout.components
            let milliseconds = max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            return [Array("WAIT".utf8), Array(String(replicas).utf8), Array(String(milliseconds).utf8)]
        }

        /// How long to give the WAIT command itself before the connection gives up on it.
        var waitCommandTimeout: Duration { timeout + .seconds(5) }

        /// A one-key write (`INCR {namespace}:barrier`) on `redis`, then `WAIT`: how many
        /// replicas have every write the connection sent so far. That write is past
        /// everything the connection read, so this covers what it saw too, also when
        /// it wrote nothing else.
        ///
        /// On a ``RedisConnection`` both go out at once, one round trip: the connection
        /// writes requests in the order they are queued, so `WAIT` counts the write, and
        /// replies come back in that order, so the write's outcome is known when
        /// `WAIT`'s reply arrives.
        func replicasReached(on redis: any RedisCommandExecutor, namespace: String) async throws -> Int64 {
            let barrier = [Array("INCR".utf8), Array("{\(namespace)}:barrier".utf8)]
            guard let connection = redis as? RedisConnection else {
                _ = try await redis.send(barrier, timeout: nil)
                return try await redis.send(waitCommand, timeout: waitCommandTimeout).int ?? 0
            }
            let written = BarrierOutcome()
            connection.send(barrier, timeout: nil) { result in written.result.withLock { $0 = result } }
            let waited = try await connection.send(waitCommand, timeout: waitCommandTimeout)
            if case .failure(let error)? = written.result.withLock({ $0 }) { throw error }
            return waited.int ?? 0
        }

        /// The barrier write's reply, handed over from the connection's thread.
        private final class BarrierOutcome: Sendable {
            let result = Mutex<Result<RedisReply, any Error>?>(nil)
        }
    }

    /// The namespace (an independent store).
    public let namespace: String
    /// With a value, every write waits for that many replicas (see ``Durability``).
    public let durability: Durability?
    /// The connection (or pool) requests go through.
    public let redis: any RedisCommandExecutor
    /// The request limits.
    public let limits: Limits
    let keys: [[UInt8]]
    /// Sends KV requests of bounded work (``KVOperation/boundedWork``), gathering those
    /// that arrive while Redis is busy into one call.
    private let batcher: RequestBatcher
    /// Runs kv.lua, as a Redis function where the server allows it.
    private let kvFunction: StoreFunction
    private let ownedConnection: RedisConnection?
    private let hubStorage = Mutex<WatchHub?>(nil)
    /// What this client knows of the store's identity and history (storeReset detection).
    let incarnation = Mutex(StoreIncarnation())
    private let resetObservers = Mutex<(next: Int, handlers: [Int: @Sendable (CoordinationError) -> Void])>((0, [:]))
    private let keeperStorage = Mutex<Task<LeaseKeeper, any Error>?>(nil)

    /// The lease keeper of this client (its own thread and connection), started on first use.
    var leaseKeeper: LeaseKeeper {
        get async throws {
            let task = try keeperStorage.withLock { storage -> Task<LeaseKeeper, any Error> in
                if let task = storage { return task }
                let configuration = try readerConfiguration
                let (namespace, keys, durability) = (namespace, keys, durability)
                let identity = LeaseKeeper.Identity(
                    ticket: { [weak self] in self?.incarnation.withLock { $0.ticket() } ?? StoreIncarnation.Ticket(highest: 0, generation: 0) },
                    check: { [weak self] reply, ticket, record in try? self?.check(reply, sentWith: ticket, record: record) },
                    confirm: { [weak self] revision, ticket in self?.incarnation.withLock { $0.confirm(revision, sentWith: ticket) } })
                let task = Task { try await LeaseKeeper.start(configuration: configuration, namespace: namespace, keys: keys, identity: identity, durability: durability) }
                storage = task
                return task
            }
            do {
                return try await task.value
            } catch {
                // Let a later call try again (Redis may be back by then).
                keeperStorage.withLock { storage in if storage == task { storage = nil } }
                throw error
            }
        }
    }

    /// How the watch reader opens its connection, and where its task runs (see
    /// ``readWatchLog(on:opening:)``); nil: a connection with a thread of its own, and
    /// a task on Swift's global executor.
    private let watchReaderPlacement = Mutex<WatchReaderPlacement?>(nil)

    struct WatchReaderPlacement: Sendable {
        let executor: any TaskExecutor
        let open: @Sendable (RedisConfiguration) async throws -> RedisConnection
    }

    var watchReader: WatchReaderPlacement? { watchReaderPlacement.withLock { $0 } }

    /// Runs the watch reader's task on `executor` and opens its connection with `open`
    /// (from the next reader on): coordproxy passes its event loop and a connection
    /// that loop serves, so that an entry read from the log reaches the watch streams
    /// without a hand-over between threads.
    package func readWatchLog(on executor: any TaskExecutor, opening open: @escaping @Sendable (RedisConfiguration) async throws -> RedisConnection) {
        watchReaderPlacement.withLock { $0 = WatchReaderPlacement(executor: executor, open: open) }
    }

    /// The watch hub of this client, created on first use.
    var watchHub: WatchHub {
        hubStorage.withLock { storage in
            if let hub = storage { return hub }
            let hub = WatchHub(store: self)
            storage = hub
            return hub
        }
    }

    /// How to open another connection to the store's Redis, configured as the client's
    /// own (address, Sentinel, credentials, database): for a watch reader, a probe or a
    /// tool that must not share the client's connection.
    /// - Throws: ``CoordinationError/Code/invalidArgument`` for a client built on another
    ///   kind of executor.
    public var redisConfiguration: RedisConfiguration {
        get throws { try readerConfiguration }
    }

    /// How to open the watch reader's own connection: like the client's.
    var readerConfiguration: RedisConfiguration {
        get throws {
            if let connection = redis as? RedisConnection { return connection.configuration }
            if let pool = redis as? RedisConnectionPool, let first = pool.connections.first { return first.configuration }
            throw CoordinationError(.invalidArgument, "watches and background keep-alives need a client built on a RedisConnection or RedisConnectionPool, to open a connection of their own")
        }
    }

    static let kvScript = RedisScript(String(decoding: PackageResources.kv_lua, as: UTF8.self))

    /// The Lua source of the KV script (for tools that run it directly, such as the load test's ceiling).
    public static var kvScriptSource: String { kvScript.source }
    /// The SHA-1 under which Redis knows the KV script.
    public static var kvScriptSHA1: String { kvScript.sha1 }
    /// The name of the KV script's Redis function (and of its library): the client runs
    /// the script by `FCALL` where the server allows it (see ``kvFunctionLibrary``).
    public static var kvFunctionName: String { StoreFunction.name(of: kvScript) }
    /// The KV script as a Redis function library, for `FUNCTION LOAD`: FCALL
    /// ``kvFunctionName`` takes the same KEYS and ARGV as EVALSHA ``kvScriptSHA1`` and
    /// answers alike, without running the script's setup at every call.
    public static var kvFunctionLibrary: String { StoreFunction.library(of: kvScript) }

    /// The script argument that encodes `operation` (for tools that run the script directly).
    public static func encodedRequest(_ operation: KVOperation) -> [UInt8] { encode(operation).encoded() }
    static let compactScript = RedisScript(String(decoding: PackageResources.compact_lua, as: UTF8.self))

    /// Uses an existing connection or pool.
    public init(redis: any RedisCommandExecutor, namespace: String = "coord", limits: Limits = Limits()) {
        self.redis = redis
        self.namespace = namespace
        self.limits = limits
        self.durability = nil
        self.ownedConnection = nil
        self.keys = Self.redisKeys(namespace)
        self.kvFunction = StoreFunction(Self.kvScript)
        self.batcher = Self.batcher(redis: redis, keys: keys, function: kvFunction)
    }

    private init(connection: RedisConnection, namespace: String, limits: Limits, durability: Durability?) {
        self.redis = connection
        self.namespace = namespace
        self.limits = limits
        self.durability = durability
        self.ownedConnection = connection
        self.keys = Self.redisKeys(namespace)
        self.kvFunction = StoreFunction(Self.kvScript)
        self.batcher = Self.batcher(redis: connection, keys: keys, function: kvFunction)
    }

    /// Runs the task that sends the client's batched requests on `executor` (nil, the
    /// default: Swift's global concurrent executor).
    ///
    /// Under load, requests that arrive while the connection is busy leave together in
    /// one script call, sent by a task of the client's, which also hands each request
    /// its reply. A server whose requests all run on one executor (coordproxy's event
    /// loop) passes it here: the batch's replies then resume their callers where they
    /// run, without a hop through another thread and back.
    public func runBatches(on executor: (any TaskExecutor)?) {
        batcher.runBatches(on: executor)
    }

    /// Two calls in flight per connection: one running in Redis while the next waits
    /// in its input buffer, so that Redis never idles for a round trip under load.
    private static func batcher(redis: any RedisCommandExecutor, keys: [[UInt8]], function: StoreFunction) -> RequestBatcher {
        let connections = (redis as? RedisConnectionPool)?.connections.count ?? 1
        return RequestBatcher(redis: redis, function: function, keys: keys, maxInFlight: 2 * max(connections, 1))
    }

    /// Connects to Redis at `url`, opens the store `namespace` and checks the server with
    /// ``status(allowEvictingPolicy:)``: an `allkeys-*` maxmemory-policy is refused unless
    /// `allowEvictingPolicy`, and a missing ACL permission is reported naming the command.
    public static func connect(url: String, namespace: String = "coord", limits: Limits = Limits(), allowEvictingPolicy: Bool = false,
                               durability: Durability? = nil) async throws -> CoordinationClient {
        try await connect(RedisConfiguration(url: url), namespace: namespace, limits: limits, allowEvictingPolicy: allowEvictingPolicy, durability: durability)
    }

    /// Connects with `configuration` (timeouts, client name), as ``connect(url:namespace:limits:allowEvictingPolicy:)``.
    ///
    /// The connection tells the store, at every connect and reconnect and before any
    /// request, which Redis process it reached (its `run_id`, from INFO): a different
    /// process than before (a restart, a failover) begins a new epoch, so that fencing
    /// tokens stay above every token handed out before, whatever Redis lost.
    ///
    /// With `durability`, every write (put, delete, txn, lease grant, revoke and
    /// keep-alive) is reported done only once `WAIT` confirms that many replicas have
    /// it; when they do not within the timeout, the request throws `RedisError`
    /// ``RedisError/Code/outcomeUnknown``: it was applied on the master but may be lost
    /// by a failover, never a false success. Reads answer only once what they saw has
    /// reached the replicas too (a write to `{namespace}:barrier`, then `WAIT`), so that
    /// a failover cannot take back a value that was read.
    public static func connect(_ configuration: RedisConfiguration, namespace: String = "coord", limits: Limits = Limits(), allowEvictingPolicy: Bool = false,
                               durability: Durability? = nil) async throws -> CoordinationClient {
        try await connect(configuration, namespace: namespace, limits: limits, allowEvictingPolicy: allowEvictingPolicy, durability: durability) { configuration, setup in
            try await RedisConnection.connect(configuration, setup: setup)
        }
    }

    /// Connects as ``connect(_:namespace:limits:allowEvictingPolicy:durability:)`` does,
    /// over the connection `open` makes with the store's setup hook (which it must run
    /// at every connect): coordproxy opens one its event loop serves.
    package static func connect(_ configuration: RedisConfiguration, namespace: String = "coord", limits: Limits = Limits(), allowEvictingPolicy: Bool = false,
                                durability: Durability? = nil,
                                open: (RedisConfiguration, @escaping @Sendable (RedisSetupChannel) throws -> Void) async throws -> RedisConnection) async throws -> CoordinationClient {
        if let durability, durability.replicas < 1 {
            throw CoordinationError(.invalidArgument, "durability needs at least 1 replica, not \(durability.replicas); leave it out to acknowledge writes once the master has them")
        }
        let connection = try await open(configuration, connectionSetup(namespace: namespace))
        let client = CoordinationClient(connection: connection, namespace: namespace, limits: limits, durability: durability)
        do {
            _ = try await client.status(allowEvictingPolicy: allowEvictingPolicy)
        } catch {
            await connection.close()
            throw error
        }
        await StoreFunction(kvScript).removeOtherVersions(on: connection)
        return client
    }

    /// What every store connection runs when it (re)connects: INFO's run_id, then the
    /// script's "hello", which begins a new epoch when the process is not the one the
    /// current epoch began on (also over maxmemory: its first write frees memory). A
    /// user whose ACL refuses INFO gets no new epochs. A refused hello (NOPERM) is not
    /// sent again before the next reconnect; the requests, refused alike, report it.
    static func connectionSetup(namespace: String) -> @Sendable (RedisSetupChannel) throws -> Void {
        let keys = redisKeys(namespace)
        return { channel in
            let info = try channel.send([Array("INFO".utf8), Array("server".utf8)])
            guard let text = info.string,
                  let line = text.split(separator: "\r\n").first(where: { $0.hasPrefix("run_id:") }) else { return }
            let request = MessagePack.array([.string("hello"), .string(String(line.dropFirst("run_id:".count)))]).encoded()
            try StoreFunction(kvScript).runSetup(on: channel, keys: keys, argument: request)
        }
    }

    /// Stops the watch reader (active watches end) and closes the connection this
    /// client opened (not one passed in).
    public func close() async {
        let hub = hubStorage.withLock { storage -> WatchHub? in
            defer { storage = nil }
            return storage
        }
        await hub?.stop()
        let keeper = keeperStorage.withLock { storage -> Task<LeaseKeeper, any Error>? in
            defer { storage = nil }
            return storage
        }
        if let keeper = try? await keeper?.value { await keeper.close() }
        await ownedConnection?.close()
    }

    /// The Redis keys of a namespace, in the order the KV script expects them.
    public static func redisKeys(_ namespace: String) -> [[UInt8]] {
        ["rev", "compact", "kv", "keys", "hist", "hkeys", "log", "leases", "lkeys", "ldue", "leaseseq", "id"].map { Array("{\(namespace)}:\($0)".utf8) }
    }

    // MARK: - Requests

    /// Reads one key, or a range of keys with `options.rangeEnd`.
    public func get(_ key: [UInt8], options: RangeOptions = RangeOptions()) async throws -> RangeResponse {
        let (revision, result) = try await run(.range(key: key, options: options))
        return try Self.rangeResponse(result, revision: revision)
    }

    /// Reads one key given as text.
    public func get(_ key: String, options: RangeOptions = RangeOptions()) async throws -> RangeResponse {
        try await get(Array(key.utf8), options: options)
    }

    /// Writes a value; creates the key or adds a version.
    public func put(_ key: [UInt8], _ value: [UInt8], options: PutOptions = PutOptions()) async throws -> PutResponse {
        let (revision, result) = try await run(.put(key: key, value: value, options: options))
        return try Self.putResponse(result, revision: revision)
    }

    /// Writes a text value under a text key.
    public func put(_ key: String, _ value: String, options: PutOptions = PutOptions()) async throws -> PutResponse {
        try await put(Array(key.utf8), Array(value.utf8), options: options)
    }

    /// Deletes one key, or every key in `[key, rangeEnd)`.
    public func delete(_ key: [UInt8], rangeEnd: [UInt8] = [], prevKV: Bool = false) async throws -> DeleteResponse {
        let (revision, result) = try await run(.delete(key: key, rangeEnd: rangeEnd, prevKV: prevKV))
        return try Self.deleteResponse(result, revision: revision)
    }

    /// Deletes one key given as text.
    public func delete(_ key: String, prevKV: Bool = false) async throws -> DeleteResponse {
        try await delete(Array(key.utf8), prevKV: prevKV)
    }

    /// Runs a transaction atomically.
    public func txn(_ txn: Txn) async throws -> TxnResponse {
        let (revision, result) = try await run(.txn(txn))
        return try Self.txnResponse(result, revision: revision)
    }

    // MARK: - Leases

    /// Grants a lease of `ttl` seconds (at least 2, as etcd), with the given ID or one the store chooses.
    ///
    /// - Throws: ``CoordinationError/Code/leaseExists`` when `id` is taken.
    public func grantLease(ttl: Int64, id: Int64 = 0) async throws -> LeaseGrantResponse {
        guard ttl > 0, id >= 0 else { throw CoordinationError(.invalidArgument, "a lease needs a positive TTL and a non-negative ID (0: the store chooses)") }
        let (revision, result) = try await call(.array([.string("grant"), .string(String(id)), .int(ttl)]), lease: id == 0 ? nil : id)
        guard let f = result.array, f.count == 3, let granted = f[1].text.flatMap({ Int64($0) }), let grantedTTL = f[2].int else {
            throw CoordinationError(.protocolError, "malformed grant result from kv.lua")
        }
        if id == 0 {
            // The store chose the ID: start the TTL key that wakes reapers on expiry.
            _ = try await redis.send([Array("SET".utf8), Array("{\(namespace)}:lease:\(granted)".utf8), Array(String(granted).utf8), Array("PX".utf8), Array(String(grantedTTL * 1000).utf8)], timeout: nil)
        }
        return LeaseGrantResponse(header: ResponseHeader(revision: revision), id: granted, ttl: grantedTTL)
    }

    /// Revokes a lease: every key attached to it is deleted, at one revision.
    ///
    /// - Throws: ``CoordinationError/Code/leaseNotFound``.
    @discardableResult
    public func revokeLease(_ id: Int64) async throws -> ResponseHeader {
        let (revision, _) = try await call(.array([.string("revoke"), .string(String(id))]), lease: id)
        return ResponseHeader(revision: revision)
    }

    /// Refreshes a lease to its granted TTL once.
    ///
    /// - Throws: ``CoordinationError/Code/leaseNotFound`` when it expired or was revoked.
    public func keepAliveOnce(_ id: Int64) async throws -> LeaseKeepAliveResponse {
        let (revision, result) = try await call(.array([.string("keepalive"), .string(String(id))]), lease: id)
        guard let f = result.array, f.count == 3, let ttl = f[2].int else { throw CoordinationError(.protocolError, "malformed keepalive result from kv.lua") }
        return LeaseKeepAliveResponse(header: ResponseHeader(revision: revision), id: id, ttl: ttl)
    }

    /// Keeps a lease alive every TTL/3 for as long as the returned sequence is consumed.
    /// It ends with ``CoordinationError/Code/leaseNotFound`` when the lease is gone.
    public func keepAlive(_ id: Int64) -> AsyncThrowingStream<LeaseKeepAliveResponse, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    while !Task.isCancelled {
                        let response = try await self.keepAliveOnce(id)
                        continuation.yield(response)
                        try await Task.sleep(for: .milliseconds(max(response.ttl * 1000 / 3, 100)))
                    }
                    continuation.finish()
                } catch is CancellationError {
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// The remaining and granted TTL of a lease (TTL -1 when it does not exist), and its keys.
    public func timeToLive(_ id: Int64, keys withKeys: Bool = false) async throws -> LeaseTimeToLiveResponse {
        let (revision, result) = try await call(.array([.string("ttl"), .string(String(id)), .bool(withKeys)]))
        guard let f = result.array, f.count == 5, let ttl = f[2].int, let granted = f[3].int, let keys = f[4].array else {
            throw CoordinationError(.protocolError, "malformed ttl result from kv.lua")
        }
        return LeaseTimeToLiveResponse(header: ResponseHeader(revision: revision), id: id, ttl: ttl, grantedTTL: granted, keys: keys.compactMap(\.bytes))
    }

    /// The IDs of all live leases.
    public func leases() async throws -> [Int64] {
        let (_, result) = try await call(.array([.string("leases")]))
        return (result.array?.dropFirst().first?.array ?? []).compactMap { $0.text.flatMap { Int64($0) } }.sorted()
    }

    /// Revokes every lease whose TTL has run out; returns how many. ``run()`` calls it.
    @discardableResult
    public func reapExpiredLeases() async throws -> Int {
        let (_, result) = try await call(.array([.string("reap")]))
        return Int(result.array?.dropFirst().first?.int ?? 0)
    }

    /// The client's background work with default settings, as a ServiceLifecycle
    /// `Service`: add the client to a `ServiceGroup`, or run it in a task of its own.
    public func run() async throws {
        try await run(interval: .milliseconds(100), retainRevisions: nil)
    }

    /// The client's background work, for a ServiceGroup or a task of its own: revokes
    /// expired leases (deleting their keys) within `interval` of expiry, even when
    /// nobody writes. Where the server allows CONFIG, keyspace `expired` events of the
    /// leases' TTL keys wake it at once; the periodic sweep covers lost events. (Every
    /// request also reaps due leases first.) With `retainRevisions`, it also compacts
    /// history automatically, about once a second, keeping at least that many revisions.
    /// Returns when the task is cancelled.
    public func run(interval: Duration = .milliseconds(100), retainRevisions: Int64? = nil) async throws {
        let wake = WakeSignal()
        var listener: Task<Void, Never>?
        var subscriber: RedisSubscriber?
        defer {
            listener?.cancel()
            if let subscriber { Task { await subscriber.close() } }
        }
        if let configuration = try? readerConfiguration, await KeyspaceNotifications.enable(on: redis) {
            subscriber = try? await RedisSubscriber.connect(configuration)
            if let subscriber {
                let pattern = "__keyspace@\(configuration.database)__:{\(namespace)}:lease:*"
                listener = Task {
                    try? await subscriber.subscribe(patterns: [pattern]) { events in
                        for try await event in events {
                            if case .message(let message) = event, message.payload != Array("expired".utf8) { continue }
                            wake.signal()
                        }
                    }
                }
            }
        }
        await cancelWhenGracefulShutdown {
            var lastRetention = ContinuousClock.now
            while !Task.isCancelled {
                do {
                    try await self.reapExpiredLeases()
                    if let retainRevisions, ContinuousClock.now - lastRetention >= .seconds(1) {
                        lastRetention = .now
                        try await self.applyRetention(retainRevisions)
                    }
                } catch is CancellationError {
                    break
                } catch {
                    // Redis is away, loading, read-only or busy: the next round retries.
                }
                await wake.wait(timeout: interval)
            }
        }
    }

    /// The store's current revision (a read, so it also reaps due leases first).
    public func currentRevision() async throws -> Int64 {
        try await get(Array("\u{0}".utf8)).header.revision
    }

    /// The revision history is compacted at (0: never).
    func compactedRevision() async throws -> Int64 {
        try await redis.send([Array("GET".utf8), Array("{\(namespace)}:compact".utf8)], timeout: nil).int ?? 0
    }

    /// Compacts so that `revisions` revisions of history remain, if more than that exist.
    func applyRetention(_ revisions: Int64) async throws {
        let current = try await currentRevision()
        let compacted = try await compactedRevision()
        let target = current - max(revisions, 1) + 1
        // Compact in steps of at least a quarter of the retained history, not every second.
        if target > 1 && target - compacted >= max(revisions / 4, 1) {
            do {
                try await compact(target)
            } catch let error as CoordinationError where error.code == .compacted {
                // Another client compacted meanwhile.
            }
        }
    }

    /// Discards history below `revision`: reads at older revisions fail with
    /// ``CoordinationError/Code/compacted`` from then on, while every key keeps its
    /// newest version at or below `revision`. Runs in steps of at most `chunk`
    /// history entries, so Redis is never blocked for long.
    ///
    /// - Throws: ``CoordinationError/Code/compacted`` when the store is already compacted
    ///   at or above `revision`; ``CoordinationError/Code/futureRevision`` above the current one.
    @discardableResult
    public func compact(_ revision: Int64, chunk: Int = 1_000) async throws -> ResponseHeader {
        let scriptKeys = [keys[0], keys[1], keys[2], keys[5], keys[4], keys[6]]
        var cursor: [UInt8] = []
        var header = ResponseHeader(revision: 0)
        repeat {
            let reply = try await redis.run(Self.compactScript, keys: scriptKeys,
                                            arguments: [Array(String(revision).utf8), cursor, Array(String(max(chunk, 1)).utf8)], timeout: nil)
            guard let parts = reply.array, parts.count >= 2 else { throw CoordinationError(.protocolError, "compact.lua returned \(reply)") }
            if parts[0].isNull {
                throw CoordinationError(CoordinationError.Code(name: parts[1].string ?? "invalidArgument"), parts.count > 2 ? parts[2].string ?? "" : "")
            }
            header.revision = parts[0].int ?? 0
            cursor = parts[1].bytes ?? []
        } while !cursor.isEmpty
        return header
    }

    // MARK: - Encoding

    private func run(_ operation: KVOperation) async throws -> (Int64, MessagePack) {
        var budget = limits.maxTxnOps
        try validate(operation, budget: &budget, depth: 0)
        return try await call(Self.encode(operation), batchable: operation.boundedWork)
    }

    /// Runs one encoded request through the store script; `lease` adds the lease's TTL
    /// key. A `batchable` request may share a script call with others (see ``batcher``).
    private func call(_ request: MessagePack, lease: Int64? = nil, batchable: Bool = false) async throws -> (Int64, MessagePack) {
        let ticket = incarnation.withLock { $0.ticket() }
        let reply: RedisReply
        if batchable && lease == nil {
            reply = try await batcher.run(request.encoded())
        } else {
            reply = try await kvFunction.run(on: redis, keys: scriptKeys(lease: lease), arguments: [request.encoded()])
        }
        let decoded = try Self.decodeScriptReply(reply)
        // With durability, the reply's revision counts as seen only once the replicas
        // have it: a failover that takes back a write whose WAIT fell short (its outcome
        // was reported unknown) has not lost anything acknowledged.
        try check(decoded, sentWith: ticket, record: durability == nil)
        if let failure = decoded.failure { throw failure }
        if let durability {
            let kind = request.array?.first?.text ?? ""
            let wrote = Self.writingRequests.contains(kind)
            do {
                try await replicationBarrier(durability, afterWrite: wrote)
            } catch let error as RedisError where wrote && error.code != .outcomeUnknown {
                // The request ran on the master: whatever stopped its confirmation (the
                // connection lost before the barrier was sent, an error reply to it), it
                // must not read as a request that never ran.
                throw RedisError(.outcomeUnknown, "the write was applied on the master, but confirming it with \(durability.replicas) replica(s) failed (\(error.message)): a failover now may lose it; read it back before relying on it")
            }
            incarnation.withLock { $0.confirm(decoded.revision, sentWith: ticket) }
        }
        return (decoded.revision, decoded.result)
    }

    /// With ``durability``: what the request wrote and what it saw has reached the
    /// replicas, so that a failover cannot take back a write that was acknowledged nor
    /// a value that was read (another client's write can be read, or decide a txn's
    /// compare, while its own WAIT is still under way). A one-key write behind the
    /// request, then `WAIT`: Redis waits for the replication offset of this
    /// connection's last write, which is past everything the request saw, also when
    /// the request itself wrote nothing (a read, a txn whose branch only reads).
    private func replicationBarrier(_ durability: Durability, afterWrite: Bool) async throws {
        let reached = try await durability.replicasReached(on: redis, namespace: namespace)
        guard reached < Int64(durability.replicas) else { return }
        throw RedisError(.outcomeUnknown, afterWrite
            ? "the write reached \(reached) of the \(durability.replicas) replica(s) required within \(durability.timeout): the master has it, but a failover now may lose it; read it back before relying on it"
            : "the read saw writes that have not reached \(durability.replicas) replica(s) within \(durability.timeout): a failover now may undo what it returned; retry it")
    }

    /// The requests that can write (a shortfall of ``durability`` is reported as the write's).
    static let writingRequests: Set<String> = ["put", "delete", "txn", "grant", "revoke", "keepalive", "reap"]

    /// Checks a reply's store identity against what this client knows; a reply that
    /// shows a reset ends every watch and session of the client and throws
    /// ``CoordinationError/Code/storeReset``.
    func check(_ reply: ScriptReply, sentWith ticket: StoreIncarnation.Ticket, record: Bool = true) throws {
        guard let identity = reply.identity else { return }
        let verdict = incarnation.withLock { $0.observe(id: identity.id, revision: reply.revision, epoch: identity.epoch, sentWith: ticket, record: record) }
        try act(on: verdict, revision: reply.revision)
    }

    /// Reports a verdict: a reset ends every watch (the reader goes on from `revision`
    /// of the new history) and every session; both reset verdicts throw.
    func act(on verdict: StoreIncarnation.Verdict, revision: Int64) throws {
        switch verdict {
        case .consistent:
            return
        case .reset(let message):
            let error = CoordinationError(.storeReset, message + "; every watch, session and lock of this client on the old history has ended: re-read the state and start again",
                                          compactRevision: revision)
            storeWasReset(error, revision: revision)
            throw error
        case .crossedReset:
            throw CoordinationError(.storeReset, "the store was reset while this request was in flight (Redis lost data); it ran against the new history", compactRevision: revision)
        }
    }

    /// Ends what hangs on the old history: every watch (with `error`) and, through
    /// the observers, every session.
    func storeWasReset(_ error: CoordinationError, revision: Int64) {
        let hub = hubStorage.withLock { $0 }
        hub?.endAll(error, revision: revision, generation: incarnation.withLock { $0.generation })
        let handlers = resetObservers.withLock { Array($0.handlers.values) }
        for handler in handlers { handler(error) }
    }

    /// Calls `handler` when this client detects a store reset (see
    /// ``CoordinationError/Code/storeReset``), until the returned registration is
    /// removed with ``removeStoreResetObserver(_:)``. Sessions use it to end.
    public func onStoreReset(_ handler: @escaping @Sendable (CoordinationError) -> Void) -> Int {
        resetObservers.withLock { observers in
            defer { observers.next += 1 }
            observers.handlers[observers.next] = handler
            return observers.next
        }
    }

    /// Stops calling an observer registered with ``onStoreReset(_:)``.
    public func removeStoreResetObserver(_ registration: Int) {
        _ = resetObservers.withLock { $0.handlers.removeValue(forKey: registration) }
    }

    /// The fencing token of a key created at `createRevision`: its create revision
    /// carried into the store's epoch, so that tokens never repeat, also across a
    /// Redis restart or failover that lost writes (each one begins a new epoch whose
    /// tokens are above every earlier token). Within one epoch tokens differ exactly as
    /// create revisions do. Compare tokens as plain integers.
    public func fencingToken(forCreateRevision createRevision: Int64) async throws -> Int64 {
        if let token = incarnation.withLock({ $0.token(createRevision: createRevision) }) { return token }
        let (_, result) = try await call(.array([.string("hello"), .string("")]))
        let epochs = (result.array?.dropFirst().first?.array ?? []).compactMap { pair -> StoreIncarnation.Epoch? in
            guard let values = pair.array, values.count == 2, let base = values[0].int, let start = values[1].int else { return nil }
            return StoreIncarnation.Epoch(base: base, start: start)
        }
        guard let token = StoreIncarnation.token(createRevision: createRevision, epochs: epochs) else {
            throw CoordinationError(.protocolError, "the store has no epoch for revision \(createRevision)")
        }
        return token
    }

    /// The KEYS of one KV script call; `lease` adds the lease's TTL key.
    func scriptKeys(lease: Int64?) -> [[UInt8]] {
        var scriptKeys = keys
        if let lease { scriptKeys.append(Array("{\(namespace)}:lease:\(lease)".utf8)) }
        return scriptKeys
    }

    /// A decoded KV script reply.
    struct ScriptReply {
        var revision: Int64
        var result: MessagePack
        /// The store's ID and epoch, when the script sent them (with an error too).
        var identity: (id: String, epoch: StoreIncarnation.Epoch)?
        /// The store's error, when it refused the request (`result` is then `.null`).
        var failure: CoordinationError?

        /// The reply of a request the store carried out; throws the store's error.
        func succeeded() throws -> ScriptReply {
            if let failure { throw failure }
            return self
        }
    }

    /// The revision, result or error, and store identity of a KV script reply. A
    /// refused request's reply carries the identity too (check it before throwing
    /// ``ScriptReply/failure``).
    static func decodeScriptReply(_ reply: RedisReply) throws -> ScriptReply {
        guard let bytes = reply.bytes, case .array(let parts) = try MessagePack.decode(bytes), parts.count >= 2 else {
            throw CoordinationError(.protocolError, "kv.lua returned \(reply)")
        }
        var decoded: ScriptReply
        var identityAt = 2
        if case .bool(false) = parts[0] {
            let code = parts[1].text ?? "invalidArgument"
            let failure = CoordinationError(CoordinationError.Code(name: code), parts.count > 2 ? parts[2].text ?? "" : "")
            guard parts.count >= 7, let revision = parts[3].int else { throw failure }
            decoded = ScriptReply(revision: revision, result: .null, failure: failure)
            identityAt = 4
        } else {
            guard let revision = parts[0].int else { throw CoordinationError(.protocolError, "kv.lua returned no revision") }
            decoded = ScriptReply(revision: revision, result: parts[1])
        }
        if parts.count >= identityAt + 3, let id = parts[identityAt].text, let start = parts[identityAt + 1].int, let base = parts[identityAt + 2].int {
            decoded.identity = (id, StoreIncarnation.Epoch(base: base, start: start))
        }
        return decoded
    }

    static let emptyKey = CoordinationError(.emptyKey, "key is not provided: etcd keys must not be empty")

    /// etcd's request checks (v3rpc/key.go): empty keys, sizes, ignore flags with a
    /// value or lease, and the operation budget, which nested txns share.
    private func validate(_ operation: KVOperation, budget: inout Int, depth: Int) throws {
        switch operation {
        case .range(let key, _):
            if key.isEmpty { throw Self.emptyKey }
        case .put(let key, let value, let options):
            if key.isEmpty { throw Self.emptyKey }
            if value.count > limits.maxValueBytes {
                throw CoordinationError(.valueTooLarge, "value of \(value.count) bytes is above the limit of \(limits.maxValueBytes); store large values elsewhere and put a reference")
            }
            if options.ignoreValue && !value.isEmpty {
                throw CoordinationError(.invalidArgument, "value is provided: ignoreValue keeps the current value, so give none")
            }
            if options.ignoreLease && options.lease != 0 {
                throw CoordinationError(.invalidArgument, "lease is provided: ignoreLease keeps the current lease, so give none")
            }
        case .delete(let key, _, _):
            if key.isEmpty { throw Self.emptyKey }
        case .txn(let txn):
            if depth >= 4 {
                throw CoordinationError(.invalidArgument, "transactions nested deeper than 4 levels are not supported; flatten the transaction")
            }
            let count = max(txn.success.count, txn.failure.count, txn.compares.count)
            if count > budget {
                throw CoordinationError(.tooManyOps, "too many operations in txn request: \(limits.maxTxnOps - budget + count) > \(limits.maxTxnOps), nested txns included; split the transaction")
            }
            budget -= count
            for compare in txn.compares where compare.key.isEmpty {
                throw CoordinationError(.emptyKey, "key is not provided in a compare")
            }
            for branch in [txn.success, txn.failure] {
                var branchBudget = budget
                for inner in branch { try validate(inner, budget: &branchBudget, depth: depth + 1) }
            }
        }
    }

    static func encode(_ operation: KVOperation) -> MessagePack {
        switch operation {
        case .range(let key, let o):
            return .array([.string("range"), .bytes(key), .bytes(o.rangeEnd), .int(o.limit), .int(o.revision),
                           .string(o.sortOrder.rawValue), .string(o.sortTarget.rawValue), .bool(o.keysOnly), .bool(o.countOnly),
                           .int(o.minModRevision), .int(o.maxModRevision), .int(o.minCreateRevision), .int(o.maxCreateRevision)])
        case .put(let key, let value, let o):
            return .array([.string("put"), .bytes(key), .bytes(value), .string(String(o.lease)), .bool(o.prevKV), .bool(o.ignoreValue), .bool(o.ignoreLease)])
        case .delete(let key, let rangeEnd, let prevKV):
            return .array([.string("delete"), .bytes(key), .bytes(rangeEnd), .bool(prevKV)])
        case .txn(let txn):
            let compares: [MessagePack] = txn.compares.map { compare in
                let (target, operand): (String, MessagePack) = switch compare.target {
                case .value(let value): ("value", .bytes(value))
                case .version(let version): ("version", .int(version))
                case .createRevision(let revision): ("create", .int(revision))
                case .modRevision(let revision): ("mod", .int(revision))
                case .lease(let lease): ("lease", .string(String(lease)))
                }
                return .array([.string(target), .string(compare.result.rawValue), .bytes(compare.key), .bytes(compare.rangeEnd), operand])
            }
            return .array([.string("txn"), .array(compares), .array(txn.success.map(encode)), .array(txn.failure.map(encode))])
        }
    }

    // MARK: - Decoding

    private static func keyValue(_ value: MessagePack) throws -> KeyValue {
        guard let f = value.array, f.count == 6, let key = f[0].bytes, let create = f[1].int, let mod = f[2].int,
              let version = f[3].int, let lease = f[4].text.flatMap({ Int64($0) }), let data = f[5].bytes else {
            throw CoordinationError(.protocolError, "malformed key-value from kv.lua")
        }
        return KeyValue(key: key, value: data, createRevision: create, modRevision: mod, version: version, lease: lease)
    }

    static func rangeResponse(_ result: MessagePack, revision: Int64) throws -> RangeResponse {
        guard let f = result.array, f.count == 4, f[0].text == "range", let kvs = f[1].array, let more = f[2].bool, let count = f[3].int else {
            throw CoordinationError(.protocolError, "malformed range result from kv.lua")
        }
        return RangeResponse(header: ResponseHeader(revision: revision), kvs: try kvs.map(keyValue), more: more, count: count)
    }

    static func putResponse(_ result: MessagePack, revision: Int64) throws -> PutResponse {
        guard let f = result.array, f.count == 2, f[0].text == "put" else {
            throw CoordinationError(.protocolError, "malformed put result from kv.lua")
        }
        let previous: KeyValue? = if case .bool(false) = f[1] { nil } else { try keyValue(f[1]) }
        return PutResponse(header: ResponseHeader(revision: revision), prevKV: previous)
    }

    static func deleteResponse(_ result: MessagePack, revision: Int64) throws -> DeleteResponse {
        guard let f = result.array, f.count == 3, f[0].text == "delete", let deleted = f[1].int, let previous = f[2].array else {
            throw CoordinationError(.protocolError, "malformed delete result from kv.lua")
        }
        return DeleteResponse(header: ResponseHeader(revision: revision), deleted: deleted, prevKVs: try previous.map(keyValue))
    }

    static func txnResponse(_ result: MessagePack, revision: Int64) throws -> TxnResponse {
        guard let f = result.array, f.count == 3, f[0].text == "txn", let succeeded = f[1].bool, let inner = f[2].array else {
            throw CoordinationError(.protocolError, "malformed txn result from kv.lua")
        }
        let responses: [OperationResponse] = try inner.map { item in
            switch item.array?.first?.text {
            case "range": return .range(try rangeResponse(item, revision: revision))
            case "put": return .put(try putResponse(item, revision: revision))
            case "delete": return .delete(try deleteResponse(item, revision: revision))
            case "txn": return .txn(try txnResponse(item, revision: revision))
            default: throw CoordinationError(.protocolError, "unknown operation result from kv.lua")
            }
        }
        return TxnResponse(header: ResponseHeader(revision: revision), succeeded: succeeded, responses: responses)
    }
}

extension CoordinationClient: Service {}
