@testable import RESPFrontEnd
import Synchronization
import Testing

/// The TIMEOUT of the blocking commands (COORD.LOCK, CAMPAIGN, FORTRESS, SEMAPHORE):
/// nil when the wait runs out, but never nil for a wait that got what it waited for.
@Suite struct BlockingTimeoutTests {
    @Test func aWaitThatEndsInTimeAnswersItsResult() async throws {
        let result = try await ConnectionCoordination.within(.seconds(30)) { 7 }
        #expect(result == 7)
    }

    @Test func aWaitThatHonoursCancellationAnswersNilAtTheTimeout() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await ConnectionCoordination.within(.milliseconds(50)) { () -> Int in
            try await Task.sleep(for: .seconds(30))
            return 7
        }
        #expect(result == nil)
        #expect(clock.now - start < .seconds(20))
    }

    /// A lock acquired just as the timer fires (the Redis call under way, which the
    /// cancellation does not stop) is held by the connection: answering nil would
    /// leave the client believing it waited in vain while every other contender waits
    /// for a lock nobody knows it holds.
    @Test func aWaitThatSucceedsAfterTheTimerFiredStillAnswersItsResult() async throws {
        let cancelled = Atomic<Bool>(false)
        let result = try await ConnectionCoordination.within(.milliseconds(20)) { () -> Int in
            // The wait ends at the cancellation, and the body goes on to succeed, as a
            // lock whose Redis call had already been sent.
            try? await Task.sleep(for: .seconds(10))
            cancelled.store(Task.isCancelled, ordering: .relaxed)
            return 7
        }
        let timerFiredFirst = cancelled.load(ordering: .relaxed)
        #expect(timerFiredFirst, "the timer did not fire first: the test proves nothing")
        #expect(result == 7)
    }

    @Test func aWaitThatFailsAfterTheTimerFiredAnswersNil() async throws {
        struct Failure: Error {}
        let result = try await ConnectionCoordination.within(.milliseconds(20)) { () -> Int in
            try? await Task.sleep(for: .seconds(10))
            throw Failure()
        }
        #expect(result == nil)
    }
}
