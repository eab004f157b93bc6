import Synchronization

/// Starts `worker` inside a visit to `guest` and returns once the visit has begun;
/// the visit stays open, holding off any lockdown, until the worker ends
/// (juju's `fortress.Occupy`).
///
/// Use it for long-lived work that must never overlap a lockdown: a service that
/// reads a directory the guard replaces now and then. The fortress's guard cannot
/// complete a lockdown while the worker runs, so it stops the worker first (by
/// whatever means the worker offers, usually cancelling the returned task).
///
/// The caller takes responsibility for the returned task's lifetime, and the
/// responsibility is especially heavy here: as long as the task runs, every
/// lockdown of the fortress waits for it. The alternative would be for the
/// fortress to own the worker as well, with two components responsible for one
/// worker's lifetime and the fortress learning to start, stop and supervise work;
/// that ends up much worse.
///
/// ```swift
/// let collector = try await occupy(charmDirectory) { try await metricsCollector.run() }
/// // ... later, before an upgrade:
/// collector.cancel()
/// try await guardRole.lockdown()
/// ```
///
/// - Parameters:
///   - guest: The fortress to visit.
///   - worker: The work to run inside the visit; the visit ends when it returns or throws.
/// - Returns: The task running the worker (inside the visit); its value is the
///   worker's result or error.
/// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the visit began
///   (the worker never runs); ``ConcurrencyError/Code/shutdown`` when the fortress is
///   closed before the visit began; any other error that kept the visit from
///   starting.
public func occupy<T: Sendable>(
    _ guest: some FortressGuest,
    _ worker: @escaping @Sendable () async throws -> T
) async throws -> Task<T, any Error> {
    let started = Mutex(false)
    let signal = Latch()
    let task = Task {
        try await guest.visit {
            started.withLock { $0 = true }
            signal.open()
            return try await worker()
        }
    }
    Task {
        _ = await task.result
        signal.open()
    }
    await withTaskCancellationHandler {
        await signal.wait()
    } onCancel: {
        // Abort the visit only while it has not begun: once begun, the task is the caller's.
        started.withLock { hasStarted in
            if !hasStarted { task.cancel() }
        }
    }
    if !signal.isOpen {
        // Cancelled: the visit was aborted, unless it was being let in at that moment.
        // Either way it decides quickly; wait for that outside this cancelled task.
        await Task { await signal.wait() }.value
    }
    if started.withLock({ $0 }) {
        return task
    }
    switch await task.result {
    case .failure(let error):
        throw error
    case .success:
        // Unreachable: a visit that returns has begun.
        throw ConcurrencyError(.aborted, "the occupation was cancelled before its visit began")
    }
}
