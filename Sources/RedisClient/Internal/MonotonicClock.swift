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

    static func deadline(after duration: Duration?) -> UInt64 {
        guard let duration else { return .max }
        let (sum, overflow) = now().addingReportingOverflow(nanoseconds(duration))
        return overflow ? .max : sum
    }
}
