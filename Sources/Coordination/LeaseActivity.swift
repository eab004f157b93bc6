import Synchronization

/// A sign of life that a background keep-alive waits for: with one attached, a
/// lease is refreshed only while whoever owns it shows activity.
///
/// A lease kept alive by ``CoordinationClient/keepAliveInBackground(_:ttl:aliveSince:activity:)``
/// lives as long as this process reaches Redis. When the lease stands for somebody
/// else (coordproxy keeps one per client connection), that is not enough: a client
/// that is stopped (SIGSTOP, a debugger, a swapped-out VM) keeps its TCP connection
/// open but does nothing, and its locks must not outlive it forever. With an
/// activity attached, a refresh is sent only if ``note()`` was called since the
/// previous refresh was sent, or while the owner is ``setBusy(_:)`` (waiting on a
/// request of its own, such as a blocked lock). An owner that shows no activity
/// lets the lease expire between one and four thirds of a TTL after its last sign
/// of life.
///
/// ```swift
/// let activity = LeaseActivity()
/// let keeper = try await store.keepAliveInBackground(lease, ttl: 10, activity: activity)
/// // For every request of the client:
/// activity.note()
/// ```
public final class LeaseActivity: Sendable {
    private struct State {
        var busy = false
        var last: ContinuousClock.Instant
        /// A keeper skipped a refresh for want of activity and waits to be woken.
        var parked = false
        var wake: (@Sendable () -> Void)?
    }

    private let state: Mutex<State>

    /// An activity whose last sign of life is now.
    public init() {
        state = Mutex(State(last: .now))
    }

    /// Records a sign of life now (a request received or answered).
    public func note() {
        let wake = state.withLock { state -> (@Sendable () -> Void)? in
            state.last = .now
            guard state.parked else { return nil }
            state.parked = false
            return state.wake
        }
        wake?()
    }

    /// Marks the owner busy (a request of its own in progress: refreshes continue
    /// however long it takes) or idle again (a sign of life now).
    public func setBusy(_ busy: Bool) {
        let wake = state.withLock { state -> (@Sendable () -> Void)? in
            if state.busy == busy { return nil }
            state.busy = busy
            state.last = .now
            guard state.parked else { return nil }
            state.parked = false
            return state.wake
        }
        wake?()
    }

    /// Whether there was activity after `instant` (or the owner is busy); when there
    /// was not, the caller is parked and `wake` runs at the next sign of life.
    func active(since instant: ContinuousClock.Instant, orWake wake: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { state in
            if state.busy || state.last > instant { return true }
            state.parked = true
            state.wake = wake
            return false
        }
    }
}
