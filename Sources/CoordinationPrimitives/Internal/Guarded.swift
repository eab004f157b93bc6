import Coordination

/// How a guarded body ended.
private enum GuardedOutcome<T: Sendable>: Sendable {
    /// The body returned.
    case finished(T)
    /// The session ended or the key was deleted.
    case lost
    /// The watcher was cancelled (the body finished first).
    case unwatched
}

extension Session {
    /// Runs `body` while this session lives and `key` (written at or before `revision`)
    /// exists. When either goes, `body` is cancelled and, once it has returned, `lost`
    /// is thrown: work protected by a lease stops instead of going on unprotected.
    func guarded<T: Sendable>(key: [UInt8], from revision: Int64, lost: @escaping @Sendable () -> any Error,
                              _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let client = client
        return try await withThrowingTaskGroup(of: GuardedOutcome<T>.self) { group -> T in
            group.addTask { .finished(try await body()) }
            group.addTask {
                do {
                    try await withThrowingTaskGroup(of: Void.self) { watchers in
                        watchers.addTask { await self.done() }
                        watchers.addTask { try await client.nextDelete(of: key, from: revision) }
                        defer { watchers.cancelAll() }
                        try await watchers.next()
                    }
                } catch {
                    // The key can no longer be watched (the watch failed): the session's
                    // end still cancels the body.
                    await self.done()
                }
                return Task.isCancelled ? .unwatched : .lost
            }
            while let outcome = try await group.next() {
                switch outcome {
                case .finished(let value):
                    group.cancelAll()
                    return value
                case .unwatched:
                    continue
                case .lost:
                    group.cancelAll()
                    _ = try? await group.next()
                    if endedBecause == .storeReset {
                        throw CoordinationError(.storeReset, "Redis lost the store's data while \(String(decoding: key, as: UTF8.self)) was held; the protected work was cancelled")
                    }
                    throw lost()
                }
            }
            throw CancellationError()
        }
    }
}

extension Session {
    /// Deletes this session's `key` (only the incarnation created at `createRevision`,
    /// when given) in a task of its own that neither the caller's cancellation nor a
    /// passing connection loss stops: it retries with backoff until the delete is done,
    /// or the lease is gone (and the key with it), or a TTL has passed. Returns when
    /// it has finished (awaiting an unstructured task does not cancel it).
    func abandon(_ key: [UInt8], createRevision: Int64? = nil) async {
        let client = client, ttl = ttl
        let attempt = Task {
            let deadline = ContinuousClock.now + .seconds(ttl)
            var delay = Duration.milliseconds(50)
            while true {
                do {
                    if let createRevision {
                        _ = try await client.txn(Txn(compares: [Compare(key: key, .createRevision(createRevision), .equal)],
                                                     success: [.delete(key: key, rangeEnd: [], prevKV: false)]))
                    } else {
                        _ = try await client.delete(key)
                    }
                    return
                } catch {
                    if ContinuousClock.now >= deadline { return }
                    if (try? await client.timeToLive(lease).ttl) == -1 { return }
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(1))
                }
            }
        }
        await attempt.value
    }
}
