#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The keys and waits the recipes share (etcd's contrib/recipes key.go, watch.go and
// client.go): keys created only when absent, unique keys, sequential keys, claiming
// a key by its mod revision, and waiting for the next event on a key or a range.

extension CoordinationClient {
    /// Creates `key` unless it exists (etcd's `putNewKV`: a txn on create revision 0).
    /// - Returns: the revision that created it, or `nil` when the key already existed.
    func createKey(_ key: [UInt8], value: [UInt8] = [], lease: Int64 = 0) async throws -> Int64? {
        let response = try await txn(Txn(
            compares: [Compare(key: key, .createRevision(0), .equal)],
            success: [.put(key: key, value: value, options: PutOptions(lease: lease))]))
        return response.succeeded ? response.header.revision : nil
    }

    /// Creates `key`, or finds it when this session already made it (a retried lock, a
    /// second enter): the key's create revision either way.
    func createOrFindKey(_ key: [UInt8], value: [UInt8] = [], lease: Int64) async throws -> (revision: Int64, created: Bool) {
        let response = try await txn(Txn(
            compares: [Compare(key: key, .createRevision(0), .equal)],
            success: [.put(key: key, value: value, options: PutOptions(lease: lease))],
            failure: [.range(key: key, options: RangeOptions())]))
        if response.succeeded { return (response.header.revision, true) }
        guard case .range(let found)? = response.responses.first, let kv = found.kvs.first else {
            throw CoordinationError(.protocolError, "key \(String(decoding: key, as: UTF8.self)) vanished inside a transaction")
        }
        return (kv.createRevision, false)
    }

    /// Creates a new key `prefix<nanoseconds since 1970>` (etcd's `newUniqueKV`),
    /// trying the next nanosecond when the key is taken.
    func createUniqueKey(under prefix: [UInt8], value: [UInt8], lease: Int64 = 0) async throws -> (key: [UInt8], revision: Int64) {
        var stamp = wallClockNanoseconds()
        while true {
            let key = prefix + bytes(String(stamp))
            if let revision = try await createKey(key, value: value, lease: lease) { return (key, revision) }
            stamp = max(stamp + 1, wallClockNanoseconds())
        }
    }

    /// Creates `prefix<16-digit sequence number>`, one more than the greatest key under
    /// `prefix` (etcd's `newSequentialKV`), and runs `also` in the same transaction.
    ///
    /// The create succeeds only while no key at or above the new one exists, so key
    /// order under `prefix` is always creation order, even when keys are deleted
    /// in between. (etcd guards the same race with a bookkeeping key `__<prefix>`; a
    /// compare over the range `[new key, end of prefix)` needs no extra key.)
    /// - Returns: the new key and the transaction's response (its success branch).
    func createSequentialKey(under prefix: [UInt8], value: [UInt8], lease: Int64 = 0,
                             also: ([UInt8]) -> [KVOperation] = { _ in [] }) async throws -> (key: [UInt8], response: TxnResponse) {
        var newest = RangeOptions.prefix(prefix)
        newest.sortTarget = .key
        newest.sortOrder = .descend
        newest.limit = 1
        newest.keysOnly = true
        var last = try await get(prefix, options: newest).kvs.first
        while true {
            let number = try last.map { try Self.sequenceNumber(of: $0.key, under: prefix) + 1 } ?? 0
            let key = prefix + bytes(zeroPadded(number, width: 16))
            let response = try await txn(Txn(
                compares: [Compare(key: key, rangeEnd: newest.rangeEnd, .createRevision(0), .equal)],
                success: [.put(key: key, value: value, options: PutOptions(lease: lease))] + also(key),
                failure: [.range(key: prefix, options: newest)]))
            if response.succeeded { return (key, response) }
            guard case .range(let found)? = response.responses.first else {
                throw CoordinationError(.protocolError, "unexpected transaction response while creating a sequential key")
            }
            last = found.kvs.first
        }
    }

    private static func sequenceNumber(of key: [UInt8], under prefix: [UInt8]) throws -> Int64 {
        let suffix = String(decoding: key.dropFirst(prefix.count), as: UTF8.self)
        guard let number = Int64(suffix), number >= 0 else {
            throw ConcurrencyError(.invalidArgument, "key \(String(decoding: key, as: UTF8.self)) is not a sequence number under \(String(decoding: prefix, as: UTF8.self)); keep that prefix for this recipe's keys alone")
        }
        return number
    }

    /// Deletes `kv` only if nobody has changed or deleted it since it was read
    /// (etcd's `deleteRevKey`): whoever succeeds has claimed it.
    func claim(_ kv: KeyValue) async throws -> Bool {
        try await txn(Txn(
            compares: [Compare(key: kv.key, .modRevision(kv.modRevision), .equal)],
            success: [.delete(key: kv.key, rangeEnd: [], prevKV: false)])).succeeded
    }

    /// Returns the first event of `kind` on `key` (or on `[key, rangeEnd)`) at or after
    /// `revision` (etcd's `WaitEvents`/`WaitPrefixEvents`).
    ///
    /// With `ownKey`, throws ``ConcurrencyError/Code/sessionExpired`` as soon as that key
    /// is deleted first, and reaps expired leases while waiting (see `waitDelete`).
    func nextEvent(_ kind: WatchEvent.Kind, on key: [UInt8], rangeEnd: [UInt8] = [], from revision: Int64,
                   ownKey: [UInt8]? = nil) async throws -> WatchEvent {
        try await withThrowingTaskGroup(of: WatchEvent.self) { group in
            group.addTask {
                let options = WatchOptions(rangeEnd: rangeEnd, startRevision: revision, noPut: kind == .delete, noDelete: kind == .put)
                for try await response in self.watch(key, options: options) {
                    if let event = response.events.first(where: { $0.kind == kind }) { return event }
                }
                try Task.checkCancellation()
                throw CoordinationError(.protocolError, "the watch on \(String(decoding: key, as: UTF8.self)) ended without an event")
            }
            if let ownKey {
                group.addTask {
                    try await self.waitDelete(ownKey, from: revision, ownKey: nil)
                    throw Self.lostKey(ownKey)
                }
            }
            defer { group.cancelAll() }
            guard let event = try await group.next() else { throw CancellationError() }
            return event
        }
    }

    /// Deletes `key` even when the calling task is cancelled (a waiter leaving a queue).
    func deleteDetached(_ key: [UInt8]) async {
        _ = try? await Task { try await self.delete(key) }.value
    }
}

/// `value` in decimal, padded with zeros to `width` digits (Go's `%0*d`).
func zeroPadded<Value: BinaryInteger>(_ value: Value, width: Int) -> String {
    let digits = String(value)
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}

/// Nanoseconds since 1970 on the wall clock (Go's `time.Now().UnixNano()`).
func wallClockNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// A key as text, for messages.
func keyText(_ key: [UInt8]) -> String { String(decoding: key, as: UTF8.self) }
