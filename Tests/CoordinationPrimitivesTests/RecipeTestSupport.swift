import Synchronization
import CoordinationPrimitives
import RedisClient
import Testing

/// State shared by the tasks of a recipe test (a `Mutex` escaping closures can capture).
final class RecipeBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    @discardableResult
    func update<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// How many tasks are inside a guarded section now, and the most there ever were.
final class RecipeOccupancy: Sendable {
    private let state = Mutex((now: 0, most: 0, visits: 0))
    func enter() {
        state.withLock { state in
            state.now += 1
            state.visits += 1
            state.most = max(state.most, state.now)
        }
    }
    func leave() { state.withLock { $0.now -= 1 } }
    var most: Int { state.withLock { $0.most } }
    var visits: Int { state.withLock { $0.visits } }
}

/// `count` clients of `server` (as `count` processes would have), closed after `body`.
/// With `count` 0, `body` gets `[store]` (etcd's single-node tests: one client for all).
func withClients<R: Sendable>(_ store: CoordinationClient, _ server: RedisServer, count: Int,
                              _ body: ([CoordinationClient]) async throws -> R) async throws -> R {
    var clients: [CoordinationClient] = []
    for _ in 0..<count { clients.append(try await connectClient(server)) }
    do {
        let result = try await body(count == 0 ? [store] : clients)
        for client in clients { await client.close() }
        return result
    } catch {
        for client in clients { await client.close() }
        throw error
    }
}

/// `count` sessions, the i-th on `clients[i % clients.count]`, closed after `body`.
func withSessions<R: Sendable>(on clients: [CoordinationClient], count: Int, ttl: Int64 = 10,
                               _ body: ([Session]) async throws -> R) async throws -> R {
    var sessions: [Session] = []
    for index in 0..<count { sessions.append(try await Session(client: clients[index % clients.count], ttl: ttl)) }
    do {
        let result = try await body(sessions)
        for session in sessions { try? await session.close() }
        return result
    } catch {
        for session in sessions { try? await session.close() }
        throw error
    }
}

/// The keys under `prefix` (text), in key order.
func recipeKeys(under prefix: String, in store: CoordinationClient) async throws -> [String] {
    try await store.get(prefix, options: .prefix(Array(prefix.utf8))).kvs.map(\.keyString)
}

/// Whether `task` finishes (returns or throws) within `limit`; cancels it when not, so
/// that a broken primitive fails the test quickly instead of hanging it.
func completes<T: Sendable>(_ task: Task<T, any Error>, within limit: Duration = .seconds(15)) async -> Bool {
    let done = Latch()
    let watcher = Task {
        _ = await task.result
        done.open()
    }
    let finished = await eventually(timeout: limit) { done.isOpen }
    if !finished { task.cancel() }
    _ = await watcher.result
    return finished
}
