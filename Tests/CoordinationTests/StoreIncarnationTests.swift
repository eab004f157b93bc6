@testable import Coordination
import Testing

/// The rules by which a reply proves that Redis lost data (no I/O).
@Suite struct StoreIncarnationTests {
    typealias Epoch = StoreIncarnation.Epoch

    @Test func repliesOfOneHistoryAreConsistentAndTheFirstIDIsAdopted() {
        var incarnation = StoreIncarnation()
        let epoch = Epoch(base: 1, start: 1_000_000)
        #expect(incarnation.observe(id: "a", revision: 1, epoch: epoch, sentWith: incarnation.ticket()) == .consistent)
        #expect(incarnation.observe(id: "a", revision: 5, epoch: epoch, sentWith: incarnation.ticket()) == .consistent)
        #expect(incarnation.id == "a" && incarnation.highest == 5 && incarnation.generation == 0)
    }

    @Test func aReplySentBeforeAHigherOneArrivedMayCarryALowerRevision() {
        // Two requests in flight on different connections: the later-sent one is
        // answered first; the earlier one's lower revision is no regression.
        var incarnation = StoreIncarnation()
        let epoch = Epoch(base: 1, start: 1_000_000)
        let early = incarnation.ticket()
        let late = incarnation.ticket()
        #expect(incarnation.observe(id: "a", revision: 9, epoch: epoch, sentWith: late) == .consistent)
        #expect(incarnation.observe(id: "a", revision: 8, epoch: epoch, sentWith: early) == .consistent)
        #expect(incarnation.highest == 9)
    }

    @Test func aRevisionBelowOneSeenBeforeTheRequestWasSentIsAReset() {
        var incarnation = StoreIncarnation()
        let epoch = Epoch(base: 1, start: 1_000_000)
        _ = incarnation.observe(id: "a", revision: 20, epoch: epoch, sentWith: incarnation.ticket())
        guard case .reset(let message) = incarnation.observe(id: "a", revision: 12, epoch: epoch, sentWith: incarnation.ticket()) else {
            Issue.record("a regression was not reported")
            return
        }
        #expect(message.contains("from 20 to 12"))
        #expect(incarnation.generation == 1 && incarnation.highest == 12)
        // The new history goes on from there.
        #expect(incarnation.observe(id: "a", revision: 13, epoch: epoch, sentWith: incarnation.ticket()) == .consistent)
    }

    @Test func anotherStoreIDOrAMissingOneIsAReset() {
        var incarnation = StoreIncarnation()
        let epoch = Epoch(base: 1, start: 1_000_000)
        _ = incarnation.observe(id: "a", revision: 20, epoch: epoch, sentWith: incarnation.ticket())
        let changed = incarnation.observe(id: "b", revision: 25, epoch: Epoch(base: 1, start: 2_000_000), sentWith: incarnation.ticket())
        #expect({ if case .reset = changed { return true } else { return false } }())
        #expect(incarnation.id == "b" && incarnation.generation == 1)
        let missing = incarnation.observeMissing(sentWith: incarnation.ticket())
        #expect({ if case .reset = missing { return true } else { return false } }())
        #expect(incarnation.id == nil && incarnation.generation == 2)
        // Nothing known: the next identity is adopted, and a missing one is no news.
        #expect(incarnation.observeMissing(sentWith: incarnation.ticket()) == .consistent)
        #expect(incarnation.observe(id: "c", revision: 2, epoch: Epoch(base: 1, start: 3_000_000), sentWith: incarnation.ticket()) == .consistent)
    }

    @Test func aNewEpochBelowARevisionSeenIsAResetEvenWhenTheNewHistoryHasOvertakenIt() {
        // Redis restored an older snapshot (revision 50) after the client saw 100, and
        // the new history reached 120 before this client asked again.
        var incarnation = StoreIncarnation()
        _ = incarnation.observe(id: "a", revision: 100, epoch: Epoch(base: 1, start: 1_000_000), sentWith: incarnation.ticket())
        let verdict = incarnation.observe(id: "a", revision: 120, epoch: Epoch(base: 50, start: 9_000_000), sentWith: incarnation.ticket())
        #expect({ if case .reset = verdict { return true } else { return false } }())
        // A restart that lost nothing begins an epoch at the revision last seen: no reset.
        var durable = StoreIncarnation()
        _ = durable.observe(id: "a", revision: 100, epoch: Epoch(base: 1, start: 1_000_000), sentWith: durable.ticket())
        #expect(durable.observe(id: "a", revision: 100, epoch: Epoch(base: 100, start: 9_000_000), sentWith: durable.ticket()) == .consistent)
        #expect(durable.current == Epoch(base: 100, start: 9_000_000))
    }

    @Test func aRequestInFlightAcrossAResetIsToldSo() {
        var incarnation = StoreIncarnation()
        let epoch = Epoch(base: 1, start: 1_000_000)
        _ = incarnation.observe(id: "a", revision: 20, epoch: epoch, sentWith: incarnation.ticket())
        let inFlight = incarnation.ticket()
        _ = incarnation.observeMissing(sentWith: incarnation.ticket())
        #expect(incarnation.observe(id: "b", revision: 2, epoch: epoch, sentWith: inFlight) == .crossedReset)
    }

    @Test func tokensCarryTheCreateRevisionIntoItsEpochAndNeverRepeat() {
        var incarnation = StoreIncarnation()
        _ = incarnation.observe(id: "a", revision: 10, epoch: Epoch(base: 1, start: 1_000_000), sentWith: incarnation.ticket())
        #expect(incarnation.token(createRevision: 5) == 1_000_004)
        #expect(incarnation.token(createRevision: 1) == nil)   // before the epoch: ask the store
        // The store's own list: each revision belongs to the last epoch begun below it.
        let epochs = [Epoch(base: 1, start: 1_000_000), Epoch(base: 30, start: 5_000_000), Epoch(base: 12, start: 9_000_000)]
        #expect(StoreIncarnation.token(createRevision: 2, epochs: Array(epochs.prefix(2))) == 1_000_001)
        #expect(StoreIncarnation.token(createRevision: 31, epochs: Array(epochs.prefix(2))) == 5_000_001)
        // After a restore to revision 12, revision 13 is created again: a new epoch gives
        // it a token above every token of the lost history (revision 31 and beyond).
        let again = StoreIncarnation.token(createRevision: 13, epochs: [epochs[0], epochs[2]])
        #expect(again == 9_000_001)
        #expect((again ?? 0) > 5_000_001)
        #expect(StoreIncarnation.token(createRevision: 1, epochs: epochs) == nil)
    }
}
