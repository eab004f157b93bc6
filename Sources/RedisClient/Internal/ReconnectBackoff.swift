/// The reconnect schedule of a connection: pure state, no I/O, tested on its own.
///
/// After a connection is lost the first attempt is immediate (a killed client or
/// restarted server usually comes back at once); each failed attempt doubles the
/// delay up to `maxDelay`, with up to 25% jitter so that many clients do not
/// reconnect in lockstep. A success resets the schedule.
struct ReconnectBackoff: Sendable {
    let initialDelay: UInt64
    let maxDelay: UInt64
    private(set) var currentDelay: UInt64
    private(set) var nextAttempt: UInt64
    private(set) var failedAttempts = 0

    init(initialDelay: UInt64, maxDelay: UInt64) {
        self.initialDelay = max(initialDelay, 1)
        self.maxDelay = max(maxDelay, initialDelay)
        self.currentDelay = self.initialDelay
        self.nextAttempt = 0
    }

    /// The connection was lost at `now`: try again at once.
    mutating func connectionLost(now: UInt64) {
        currentDelay = initialDelay
        failedAttempts = 0
        nextAttempt = now
    }

    /// An attempt at `now` failed: schedule the next one.
    mutating func attemptFailed(now: UInt64, jitter: Double = Double.random(in: 0...0.25)) {
        failedAttempts += 1
        let delay = UInt64(Double(currentDelay) * (1 + jitter))
        nextAttempt = now &+ delay
        currentDelay = min(currentDelay &* 2, maxDelay)
    }

    /// An attempt succeeded.
    mutating func connected() {
        currentDelay = initialDelay
        failedAttempts = 0
        nextAttempt = 0
    }

    /// Whether a background attempt is due at `now`.
    func isDue(now: UInt64) -> Bool { now >= nextAttempt }
}
