/// How strictly an STM transaction isolates its reads from concurrent writers
/// (etcd's `concurrency.Isolation`).
public enum STMIsolation: Sendable, Hashable, CaseIterable {
    /// Every read sees one snapshot (the revision of the first read), and the commit
    /// fails if anything read or written changed after it. The default, and etcd's.
    case serializableSnapshot
    /// Every read sees one snapshot, and the commit fails if a key read changed since.
    case serializable
    /// Each key is read once (later reads repeat it); the commit fails if one of
    /// them changed. Different keys may come from different revisions.
    case repeatableReads
    /// Reads see whatever is committed; the commit never conflicts.
    case readCommitted
}

/// What a committed STM transaction returns.
public struct STMResult<Value: Sendable>: Sendable {
    /// What the body returned.
    public var value: Value
    /// The response of the committing transaction (its header carries the revision
    /// of the writes, or the current revision when nothing was written).
    public var response: TxnResponse
    /// How many times the body ran (1 when the first attempt committed).
    public var attempts: Int
}

extension CoordinationClient {
    /// Runs `body` as a software transactional memory transaction (etcd's `NewSTM`):
    /// reads go to the store (or the transaction's own writes), writes are buffered,
    /// and at the end everything commits in one store transaction conditioned on what
    /// was read — or, when a concurrent writer got in the way, the body runs again.
    ///
    /// ```swift
    /// try await store.stm { tx in
    ///     let from = Int(try await tx.get("accounts/a") ?? "0")!
    ///     let to = Int(try await tx.get("accounts/b") ?? "0")!
    ///     tx.put("accounts/a", String(from - 10))
    ///     tx.put("accounts/b", String(to + 10))
    /// }
    /// ```
    ///
    /// The body may run several times, so keep side effects out of it. An error it
    /// throws aborts the transaction with nothing written and is rethrown as is.
    /// - Parameters:
    ///   - isolation: ``STMIsolation``; `.serializableSnapshot` by default.
    ///   - prefetch: keys read in the first request, before the body runs (saves a
    ///     round trip per key the body is known to read).
    ///   - maxAttempts: how many times the body may run before giving up with
    ///     ``ConcurrencyError/Code/conflictRetriesExhausted``. Retries after the
    ///     second wait a random (jittered), exponentially growing delay, at most 50 ms.
    ///   - body: the transaction; read and write through the ``STMTransaction`` it gets.
    /// - Returns: the body's value, the committing response and the number of attempts.
    @discardableResult
    public func stm<Value: Sendable>(
        isolation: STMIsolation = .serializableSnapshot,
        prefetch: [[UInt8]] = [],
        maxAttempts: Int = 100,
        _ body: (STMTransaction) async throws -> Value
    ) async throws -> STMResult<Value> {
        guard maxAttempts >= 1 else { throw ConcurrencyError(.invalidArgument, "maxAttempts must be at least 1, got \(maxAttempts)") }
        let tx = STMTransaction(client: self, isolation: isolation)
        for attempt in 1...maxAttempts {
            tx.reset()
            if !prefetch.isEmpty { try await tx.fetch(prefetch) }
            let value = try await body(tx)
            if let response = try await tx.commit() {
                return STMResult(value: value, response: response, attempts: attempt)
            }
            if attempt >= 2 && attempt < maxAttempts {
                let cap = min(50_000, 500 << min(attempt - 2, 10))
                try await Task.sleep(for: .microseconds(Int.random(in: 0...cap)))
            }
        }
        throw ConcurrencyError(.conflictRetriesExhausted, "the STM transaction conflicted with concurrent writers \(maxAttempts) times; retry later or raise maxAttempts")
    }
}

/// The reads and writes of one STM attempt (etcd's `STM` interface). Only valid
/// inside the body it was passed to.
public final class STMTransaction {
    private struct Write {
        var value: [UInt8]?
        var operation: KVOperation
    }

    let client: CoordinationClient
    let isolation: STMIsolation
    /// What each key read returned (key → response).
    private var reads: [[UInt8]: RangeResponse] = [:]
    /// Buffered writes, in the order of their first write.
    private var writes: [[UInt8]: Write] = [:]
    private var writeOrder: [[UInt8]] = []
    /// Serializable: responses of the failed commit, used instead of reading again.
    private var prefetched: [[UInt8]: RangeResponse] = [:]
    /// The revision reads are pinned to (serializable levels, after the first read).
    private var snapshot: Int64 = 0

    init(client: CoordinationClient, isolation: STMIsolation) {
        self.client = client
        self.isolation = isolation
    }

    /// The value of `key` as this transaction sees it (its own writes first); `nil`
    /// when the key does not exist.
    public func get(_ key: [UInt8]) async throws -> [UInt8]? {
        if let write = writes[key] { return write.value }
        return try await read(key).kvs.first?.value
    }

    /// The value of a text key; `nil` when it does not exist.
    public func get(_ key: String) async throws -> String? {
        try await get(bytes(key)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The mod revision of `key` as read by this transaction (0 when it does not exist).
    public func rev(_ key: [UInt8]) async throws -> Int64 {
        try await read(key).kvs.first?.modRevision ?? 0
    }

    /// The mod revision of a text key.
    public func rev(_ key: String) async throws -> Int64 { try await rev(bytes(key)) }

    /// Buffers a put of `key`, committed with the transaction.
    public func put(_ key: [UInt8], _ value: [UInt8], lease: Int64 = 0) {
        record(key, Write(value: value, operation: .put(key: key, value: value, options: PutOptions(lease: lease))))
    }

    /// Buffers a put of a text key.
    public func put(_ key: String, _ value: String, lease: Int64 = 0) {
        put(bytes(key), bytes(value), lease: lease)
    }

    /// Buffers a delete of `key`.
    public func delete(_ key: [UInt8]) {
        record(key, Write(value: nil, operation: .delete(key: key, rangeEnd: [], prevKV: false)))
    }

    /// Buffers a delete of a text key.
    public func delete(_ key: String) { delete(bytes(key)) }

    private func record(_ key: [UInt8], _ write: Write) {
        if writes.updateValue(write, forKey: key) == nil { writeOrder.append(key) }
    }

    private var pinsReads: Bool { isolation == .serializableSnapshot || isolation == .serializable }

    private func read(_ key: [UInt8]) async throws -> RangeResponse {
        if let response = reads[key] { return response }
        if pinsReads, let response = prefetched.removeValue(forKey: key) {
            if reads.isEmpty { snapshot = response.header.revision }
            reads[key] = response
            return response
        }
        try await fetch([key])
        guard let response = reads[key] else { throw CoordinationError(.protocolError, "STM read returned nothing") }
        return response
    }

    /// Reads `keys` (those not read yet) in one request.
    func fetch(_ keys: [[UInt8]]) async throws {
        var missing: [[UInt8]] = []
        for key in keys where reads[key] == nil && !missing.contains(key) {
            if pinsReads, let response = prefetched.removeValue(forKey: key) {
                if reads.isEmpty { snapshot = response.header.revision }
                reads[key] = response
            } else {
                missing.append(key)
            }
        }
        guard !missing.isEmpty else { return }
        let options = RangeOptions(revision: pinsReads ? snapshot : 0)
        let response = try await client.txn(Txn(success: missing.map { .range(key: $0, options: options) }))
        for (key, answer) in zip(missing, response.responses) {
            guard case .range(let range) = answer else { throw CoordinationError(.protocolError, "STM read returned a non-range response") }
            reads[key] = range
        }
        if pinsReads && snapshot == 0 { snapshot = response.header.revision }
    }

    /// Commits: `nil` when a compare failed (the caller runs the body again).
    func commit() async throws -> TxnResponse? {
        var compares: [Compare] = []
        switch isolation {
        case .serializableSnapshot, .serializable, .repeatableReads:
            for (key, response) in reads {
                compares.append(Compare(key: key, .modRevision(response.kvs.first?.modRevision ?? 0), .equal))
            }
            if isolation == .serializableSnapshot {
                // Nothing written may have changed after the snapshot either.
                let bound = (reads.values.map(\.header.revision).min() ?? Int64.max - 1) + 1
                for key in writeOrder {
                    compares.append(Compare(key: key, .modRevision(bound), .less))
                }
            }
        case .readCommitted:
            break
        }
        let readKeys = Array(reads.keys)
        let refresh: [KVOperation] = pinsReads ? readKeys.map { .range(key: $0, options: RangeOptions()) } : []
        let response = try await client.txn(Txn(compares: compares, success: writeOrder.compactMap { writes[$0]?.operation }, failure: refresh))
        if response.succeeded { return response }
        if pinsReads {
            // Retry from the current values without reading them again.
            var fresh: [[UInt8]: RangeResponse] = [:]
            for (key, answer) in zip(readKeys, response.responses) {
                if case .range(let range) = answer { fresh[key] = range }
            }
            prefetched = fresh
        }
        return nil
    }

    func reset() {
        reads = [:]
        writes = [:]
        writeOrder = []
        snapshot = 0
    }
}
