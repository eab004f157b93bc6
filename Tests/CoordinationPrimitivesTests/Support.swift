import Synchronization
import CoordinationPrimitives
import Foundation
import RedisClient
import Testing

/// Runs `body` against a store in a fresh private Redis, with the store's background
/// work (lease reaping) running, and a way to open more clients to the same server
/// (a client per simulated process).
func withStore<Result: Sendable>(
    namespace: String = "coord",
    _ body: (CoordinationClient, RedisServer) async throws -> Result
) async throws -> Result {
    try await RedisServer.withServer { server in
        let store = try await CoordinationClient.connect(url: server.url, namespace: namespace)
        let background = Task { try await store.run(interval: .milliseconds(50)) }
        do {
            let result = try await body(store, server)
            background.cancel()
            _ = await background.result
            await store.close()
            return result
        } catch {
            background.cancel()
            _ = await background.result
            await store.close()
            throw error
        }
    }
}

/// Another client of the same server (what another process would have).
func connectClient(_ server: RedisServer, namespace: String = "coord") async throws -> CoordinationClient {
    try await CoordinationClient.connect(url: server.url, namespace: namespace)
}

/// The primitive error `body` throws, or nil when it throws nothing or something else.
func concurrencyError(_ body: () async throws -> Void) async -> ConcurrencyError? {
    do {
        try await body()
        return nil
    } catch let error as ConcurrencyError {
        return error
    } catch {
        return nil
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration = .seconds(5), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// Whether `task` is still running after `delay` (it should be blocked).
func stillBlocked<T>(_ task: Task<T, any Error>, after delay: Duration = .milliseconds(300)) async -> Bool {
    let done = Latch()
    let watcher = Task {
        _ = await task.result
        done.open()
    }
    try? await Task.sleep(for: delay)
    watcher.cancel()
    return !done.isOpen
}

/// A one-shot flag for tests (set once, read from any task).
final class Latch: Sendable {
    private let state = Mutex(false)
    var isOpen: Bool { state.withLock { $0 } }
    func open() { state.withLock { $0 = true } }
}

/// Shared mutable state for test tasks (a `Mutex` that can be captured by escaping closures).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

struct TimedOut: Error, CustomStringConvertible {
    let limit: Duration
    var description: String { "timed out after \(limit)" }
}

/// Runs `operation`, failing with `TimedOut` when it takes longer than `limit` (a
/// hang detector: generous, since the machine may be busy); on
/// timeout it cancels the operation but does not wait for it (it may ignore
/// cancellation: that is what the test is catching).
@discardableResult
func within<T: Sendable>(_ limit: Duration = .seconds(20), _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let outcome = Once<T>()
    return try await withCheckedThrowingContinuation { continuation in
        outcome.set(continuation)
        let work = Task {
            do { outcome.resume(with: .success(try await operation())) } catch { outcome.resume(with: .failure(error)) }
        }
        Task {
            try? await Task.sleep(for: limit)
            if outcome.resume(with: .failure(TimedOut(limit: limit))) { work.cancel() }
        }
    }
}

/// A continuation resumed by whichever of several tasks comes first.
final class Once<T: Sendable>: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<T, any Error>?, result: Result<T, any Error>?)>((nil, nil))

    func set(_ continuation: CheckedContinuation<T, any Error>) {
        state.withLock { $0.continuation = continuation }
    }

    /// Resumes with `result` unless resumed before; returns whether this call did.
    @discardableResult
    func resume(with result: Result<T, any Error>) -> Bool {
        let continuation = state.withLock { state -> CheckedContinuation<T, any Error>?? in
            if state.result != nil { return nil }
            state.result = result
            defer { state.continuation = nil }
            return .some(state.continuation)
        }
        guard let continuation else { return false }
        continuation?.resume(with: result)
        return true
    }
}
