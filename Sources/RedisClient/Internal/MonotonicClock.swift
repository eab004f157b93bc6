import Glibc

/// Nanoseconds on CLOCK_MONOTONIC; cheap enough for the connection loop.
enum MonotonicClock {
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }

    static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        if seconds < 0 { return 0 }
        return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }

    /// CLOCK_MONOTONIC_COARSE: a few milliseconds of resolution, about half the cost.
    /// Good enough for request deadlines, which are at least tens of milliseconds.
    static func coarseNow() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }

    /// The deadline `duration` from now (`.max` for no deadline). Deadlines are
    /// compared with ``now()``; the coarse clock lags it by at most a tick, which
    /// can only make a deadline fire that much early.
    static func deadline(after duration: Duration?) -> UInt64 {
        guard let duration else { return .max }
        let (sum, overflow) = coarseNow().addingReportingOverflow(nanoseconds(duration))
        return overflow ? .max : sum
    }
}
