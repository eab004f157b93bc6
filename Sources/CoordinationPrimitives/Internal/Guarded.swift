import Coordination

/// How a guarded body ended.
private enum GuardedOutcome<T: Sendable>: Sendable {
    /// The body returned.
    case finished(T)
    /// The session ended or the key was deleted.
    case lost
    /// Watching failed (for example the connection dropped): the body goes on unwatched.
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
                    return .unwatched
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
                    throw lost()
                }
            }
            throw CancellationError()
        }
    }
}
