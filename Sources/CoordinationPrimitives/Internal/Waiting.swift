import Coordination

/// The bytes of a text key.
@inline(__always) func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

extension CoordinationClient {
    /// Waits until every key under `prefix` created at or before `maxCreateRevision` is
    /// gone (etcd's `waitDeletes`): watches only the newest of them, then looks again.
    /// Throws ``ConcurrencyError/Code/sessionExpired`` as soon as `ownKey` disappears.
    /// - Returns: a header whose revision the caller's turn has come at.
    func waitDeletes(prefix: [UInt8], maxCreateRevision: Int64, ownKey: [UInt8]) async throws -> ResponseHeader {
        var last = RangeOptions.prefix(prefix)
        last.sortOrder = .descend
        last.sortTarget = .create
        last.limit = 1
        last.maxCreateRevision = maxCreateRevision
        last.keysOnly = true
        while true {
            let response = try await txn(Txn(success: [
                .range(key: prefix, options: last),
                .range(key: ownKey, options: RangeOptions(countOnly: true)),
            ]))
            guard case .range(let predecessors)? = response.responses.first,
                  case .range(let own)? = response.responses.last else {
                throw CoordinationError(.protocolError, "unexpected transaction response while waiting")
            }
            if own.count == 0 { throw Self.lostKey(ownKey) }
            guard let predecessor = predecessors.kvs.first else { return response.header }
            let deleted = try await waitDelete(predecessor.key, from: response.header.revision + 1, ownKey: ownKey)
            // No key can be created before ours any more: when the predecessor was the
            // only one (`more` is false: the limit of 1 left nothing out), its delete is
            // our turn (and our key was still there, or the ordered watch would have said
            // so first).
            if !predecessors.more { return ResponseHeader(revision: deleted) }
        }
    }

    /// Waits for a delete of `key` at or after `revision` and returns its revision; with
    /// `ownKey`, throws `sessionExpired` when that key is deleted first. One watch, over
    /// the range spanning both keys, sees both in revision order (other keys in that
    /// range are skipped). While waiting it reaps expired leases once a second, so that
    /// a crashed holder's keys go even where no `run()` is running.
    @discardableResult
    func waitDelete(_ key: [UInt8], from revision: Int64, ownKey: [UInt8]?) async throws -> Int64 {
        try await withThrowingTaskGroup(of: Int64.self) { group in
            group.addTask {
                guard let ownKey else { return try await self.nextDelete(of: key, from: revision) }
                let (low, high) = key.lexicographicallyPrecedes(ownKey) ? (key, ownKey) : (ownKey, key)
                let options = WatchOptions(rangeEnd: high + [0], startRevision: revision, noPut: true)
                for try await response in self.watch(low, options: options) {
                    // A response holds all events of its revisions: look at all of them
                    // before taking the turn (one request may delete both keys).
                    let deletes = response.events.filter { $0.kind == .delete }
                    if deletes.contains(where: { $0.kv.key == ownKey }) { throw Self.lostKey(ownKey) }
                    if let delete = deletes.first(where: { $0.kv.key == key }) { return delete.kv.modRevision }
                }
                try Task.checkCancellation()
                throw CoordinationError(.protocolError, "the watch on \(String(decoding: key, as: UTF8.self)) ended without an event")
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(1))
                    _ = try? await self.reapExpiredLeases()
                }
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    /// Returns the revision of the first delete event of `key` from `revision` on.
    @discardableResult
    func nextDelete(of key: [UInt8], from revision: Int64) async throws -> Int64 {
        for try await response in watch(key, options: WatchOptions(startRevision: revision, noPut: true)) {
            if let delete = response.events.first(where: { $0.kind == .delete }) { return delete.kv.modRevision }
        }
        try Task.checkCancellation()
        throw CoordinationError(.protocolError, "the watch on \(String(decoding: key, as: UTF8.self)) ended without an event")
    }

    static func lostKey(_ key: [UInt8]) -> ConcurrencyError {
        ConcurrencyError(.sessionExpired, "key \(String(decoding: key, as: UTF8.self)) was deleted while waiting: the session's lease expired or was revoked; create a new session")
    }
}
