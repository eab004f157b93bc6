import RedisClient
import Synchronization

/// Keyspace notifications for a store: turns them on (merging flags, never removing
/// any) and turns their messages into wake-ups.
enum KeyspaceNotifications {
    /// The flags the store needs: keyspace channel (K) and expirations (x), which wake
    /// the lease reaper (``CoordinationClient/run(interval:retainRevisions:)``) when a
    /// lease's TTL key expires. (Watches need none: their reader blocks on the log.)
    static let needed: Set<Character> = ["K", "x"]

    /// `existing` plus what the store needs; "A" (all classes) already covers x.
    static func merged(_ existing: String) -> String {
        var flags = Set(existing)
        let classes: Set<Character> = flags.contains("A") ? ["x"] : []
        for flag in needed where !classes.contains(flag) { flags.insert(flag) }
        // A stable order makes the setting readable: K and E first, then classes.
        return String(flags.sorted { order($0) < order($1) })
    }

    private static func order(_ flag: Character) -> Int {
        Array("KEAg$lshzxetmnd").firstIndex(of: flag) ?? 99
    }

    /// Enables the notifications the store needs. Returns `false` (the caller falls back
    /// to polling or blocking reads) when the server refuses CONFIG.
    static func enable(on redis: any RedisCommandExecutor) async -> Bool {
        do {
            let reply = try await redis.send([Array("CONFIG".utf8), Array("GET".utf8), Array("notify-keyspace-events".utf8)], timeout: nil)
            let current = reply.array?.last?.string ?? ""
            let wanted = merged(current)
            if Set(wanted) != Set(current) {
                _ = try await redis.send([Array("CONFIG".utf8), Array("SET".utf8), Array("notify-keyspace-events".utf8), Array(wanted.utf8)], timeout: nil)
            }
            return true
        } catch {
            return false
        }
    }
}

/// A coalescing wake-up: `signal()` from any thread, `wait(timeout:)` from one task.
/// A signal that arrives while nobody waits is kept for the next wait.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
        var generation = 0
    }

    private let state = Mutex(State())

    func signal() {
        signal(generation: nil)
    }

    /// Wakes the waiter, or leaves the signal pending for the next wait. With
    /// `generation`, only while that wait is still the current one (its timeout).
    private func signal(generation: Int?) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let generation, state.generation != generation { return nil }
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns at the next signal (at once if one is pending). Costs no task and no
    /// timer: a waker that also wants a time bound signals on a clock of its own.
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if state.pending {
                    state.pending = false
                    return true
                }
                state.waiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Returns at the next signal (at once if one is pending), or after `timeout`.
    func wait(timeout: Duration) async {
        let generation = state.withLock { state -> Int in
            state.generation += 1
            return state.generation
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            // A timeout that comes before the wait starts stays pending: the wait returns at once.
            self.signal(generation: generation)
        }
        await wait()
        timer.cancel()
    }
}
