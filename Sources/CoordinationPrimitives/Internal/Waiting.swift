import Coordination

/// The bytes of a text key.
@inline(__always) func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

extension CoordinationClient {
    /// Waits until every key under `prefix` created at or before `maxCreateRevision` is
    /// gone (etcd's `waitDeletes`): watches only the newest of them, then looks again.
    /// Throws ``ConcurrencyError/Code/sessionExpired`` as soon as `ownKey` disappears.
    /// - Returns: the header of the read that found no predecessor.
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
            try await waitDelete(predecessor.key, from: response.header.revision + 1, ownKey: ownKey)
        }
    }

    /// Waits for a delete of `key` at or after `revision`; throws `sessionExpired` when
    /// `ownKey` (if given) is deleted first. While waiting it reaps expired leases once
    /// a second, so that a crashed holder's keys go even where no `run()` is running.
    func waitDelete(_ key: [UInt8], from revision: Int64, ownKey: [UInt8]?) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await self.nextDelete(of: key, from: revision)
            }
            if let ownKey {
                group.addTask {
                    try await self.nextDelete(of: ownKey, from: revision)
                    throw Self.lostKey(ownKey)
                }
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(1))
                    _ = try? await self.reapExpiredLeases()
                }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// Returns at the first delete event of `key` from `revision` on.
    func nextDelete(of key: [UInt8], from revision: Int64) async throws {
        for try await response in watch(key, options: WatchOptions(startRevision: revision, noPut: true)) {
            if response.events.contains(where: { $0.kind == .delete }) { return }
        }
        try Task.checkCancellation()
        throw CoordinationError(.protocolError, "the watch on \(String(decoding: key, as: UTF8.self)) ended without an event")
    }

    static func lostKey(_ key: [UInt8]) -> ConcurrencyError {
        ConcurrencyError(.sessionExpired, "key \(String(decoding: key, as: UTF8.self)) was deleted while waiting: the session's lease expired or was revoked; create a new session")
    }
}
