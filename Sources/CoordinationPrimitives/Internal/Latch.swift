import Synchronization

/// A one-shot signal: `open()` once, and every `wait()` (past or future) returns.
///
/// `wait()` also returns when the waiting task is cancelled; callers check
/// `isOpen` or `Task.isCancelled` to tell which.
final class Latch: Sendable {
    private struct State {
        var open = false
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    init() {}

    /// Whether the latch has been opened.
    var isOpen: Bool { state.withLock { $0.open } }

    /// Opens the latch and wakes every waiter; returns `false` when it was already open.
    @discardableResult
    func open() -> Bool {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>]? in
            if state.open { return nil }
            state.open = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        guard let waiters else { return false }
        for waiter in waiters { waiter.resume() }
        return true
    }

    /// Returns when the latch is open or the task is cancelled.
    func wait() async {
        let id = state.withLock { state -> Int in
            defer { state.nextID += 1 }
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.open || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
