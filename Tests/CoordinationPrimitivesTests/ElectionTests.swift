import CoordinationPrimitives
import Testing

@Suite struct ElectionTests {
    /// etcd's TestElectionWait: followers observe each leader's value in turn.
    @Test func observersSeeEachLeaderInTurn() async throws {
        try await withStore { store, server in
            let leaders = 3
            let observerClient = try await connectClient(server)
            let observerSession = try await Session(client: observerClient, ttl: 10)
            // From the current revision (no leader yet): a task that a loaded machine starts
            // late replays the leaders it missed (each leads for only 100 ms) instead of
            // waiting forever for one more.
            let start = try await store.currentRevision()
            let observed = Task { () -> [String] in
                var values: [String] = []
                for try await kv in Election(session: observerSession, prefix: "test-election").observe(startRevision: start) {
                    values.append(kv.valueString)
                    if values.count == leaders { break }
                }
                return values
            }
            var proposals: [String] = []
            for index in 0..<leaders {
                let session = try await Session(client: try await connectClient(server), ttl: 10)
                let election = Election(session: session, prefix: "test-election")
                let value = "electval-\(index)"
                proposals.append(value)
                try await election.campaign(value)
                #expect(try await election.leader().valueString == value)
                try await Task.sleep(for: .milliseconds(100))
                try await election.resign()
            }
            #expect(try await observed.value == proposals)
        }
    }

    /// etcd's TestElectionFailover: when the leader's session closes, the next candidate wins.
    @Test func theNextCandidateIsElectedWhenTheLeadersSessionCloses() async throws {
        try await withStore { store, server in
            let first = try await Session(client: store, ttl: 10)
            let election = Election(session: first, prefix: "test-election")
            try await election.campaign("foo")
            var observer = Election(session: first, prefix: "test-election").observe().makeAsyncIterator()
            #expect(try await observer.next()?.valueString == "foo")
            let second = try await Session(client: try await connectClient(server), ttl: 10)
            let challenger = Task { try await Election(session: second, prefix: "test-election").campaign("bar") }
            #expect(await stillBlocked(challenger))
            try await first.close()
            try await challenger.value
            let third = try await Session(client: try await connectClient(server), ttl: 10)
            var next = Election(session: third, prefix: "test-election").observe().makeAsyncIterator()
            #expect(try await next.next()?.valueString == "bar")
        }
    }

    /// etcd's TestElectionSessionRecampaign: campaigning again on the same session proclaims the new value.
    @Test func recampaigningOnTheSameSessionProclaimsTheNewValue() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 10)
            let election = Election(session: session, prefix: "test-elect")
            try await election.campaign("abc")
            let again = Election(session: session, prefix: "test-elect")
            try await again.campaign("def")
            #expect(again.revision == election.revision)
            var observer = election.observe().makeAsyncIterator()
            #expect(try await observer.next()?.valueString == "def")
        }
    }

    /// etcd's TestElectionOnPrefixOfExistingKey: a key that merely starts with the
    /// election's name ("testa" for "test") is not a candidate.
    @Test func aKeyThatOnlySharesTheNamePrefixIsNotACandidate() async throws {
        try await withStore { store, _ in
            _ = try await store.put("testa", "value")
            let election = Election(session: try await Session(client: store, ttl: 10), prefix: "test")
            let campaign = Task { try await election.campaign("abc") }
            let won = await eventually(timeout: .seconds(5)) { election.isLeader }
            #expect(won)
            try await campaign.value
        }
    }

    /// etcd's TestElectionOnSessionRestart: a new session on the same lease keeps leadership.
    @Test func aRestartedSessionOnTheSameLeaseKeepsLeadership() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 10)
            try await Election(session: session, prefix: "test-elect").campaign("abc")
            let waiter = Task { try await Election(session: try await Session(client: store, ttl: 10), prefix: "test-elect").campaign("123") }
            await session.orphan()
            let restarted = try await Session(client: store, lease: session.lease)
            let election = Election(session: restarted, prefix: "test-elect")
            try await election.campaign("def")
            var observer = election.observe().makeAsyncIterator()
            #expect(try await observer.next()?.valueString == "def")
            #expect(await stillBlocked(waiter))
            waiter.cancel()
        }
    }

    /// etcd's TestElectionObserveCompacted: observe works after the history is compacted.
    @Test func observeReportsTheLeaderAfterCompaction() async throws {
        try await withStore { store, _ in
            let election = Election(session: try await Session(client: store, ttl: 10), prefix: "test-elect")
            try await election.campaign("abc")
            let put = try await store.put("foo", "bar")
            _ = try await store.compact(put.header.revision)
            var observer = election.observe().makeAsyncIterator()
            #expect(try await observer.next()?.valueString == "abc")
        }
    }

    /// etcd's TestResumeElection: a resumed election can resign and campaign again,
    /// and observers see the new value.
    @Test func aResumedElectionCanResignAndCampaignAgain() async throws {
        try await withStore { store, _ in
            let session = try await Session(client: store, ttl: 10)
            let original = Election(session: session, prefix: "/resume-election")
            try await original.campaign("candidate1")
            let leader = try await original.leader()
            let resumed = Election(resuming: session, prefix: "/resume-election", leaderKey: leader.key, leaderRevision: leader.createRevision)
            let watcher = Task { () -> KeyValue? in
                for try await kv in resumed.observe() where kv.valueString != "candidate1" { return kv }
                return nil
            }
            try await Task.sleep(for: .milliseconds(100))
            _ = try await store.put("foo", "bar")
            try await resumed.resign()
            try await resumed.campaign("candidate2")
            let kv = try #require(try await watcher.value)
            #expect(kv.keyString.hasPrefix("/resume-election/"))
            #expect(kv.valueString == "candidate2")
        }
    }

    @Test func proclaimFailsWithNotLeaderAfterResigningOrLosingTheKey() async throws {
        try await withStore { store, _ in
            let election = Election(session: try await Session(client: store, ttl: 10), prefix: "e")
            #expect(await concurrencyError { try await election.proclaim("x") }?.code == .notLeader)
            try await election.campaign("a")
            try await election.proclaim("b")
            #expect(try await election.leader().valueString == "b")
            _ = try await store.delete(election.key)
            #expect(await concurrencyError { try await election.proclaim("c") }?.code == .notLeader)
            #expect(!election.isLeader)
        }
    }

    @Test func leaderFailsWithNoLeaderWhenNobodyCampaigns() async throws {
        try await withStore { store, _ in
            let election = Election(session: try await Session(client: store, ttl: 10), prefix: "e")
            #expect(await concurrencyError { _ = try await election.leader() }?.code == .noLeader)
            try await election.campaign("a")
            try await election.resign()
            #expect(await concurrencyError { _ = try await election.leader() }?.code == .noLeader)
        }
    }

    @Test func observeDeliversEveryProclamationAndNewLeaderInOrder() async throws {
        try await withStore { store, server in
            let first = Election(session: try await Session(client: store, ttl: 10), prefix: "e")
            let secondSession = try await Session(client: try await connectClient(server), ttl: 10)
            let second = Election(session: secondSession, prefix: "e")
            try await first.campaign("first-1")
            // The observer joins while first-1 leads, and everything after is live: it must
            // see every value from there, in order (waiting for its first value, so that a
            // task a loaded machine starts late does not join after the rest).
            let (joined, join) = AsyncStream<Void>.makeStream()
            let observed = Task { () -> [KeyValue] in
                // Ends the wait below too when observe throws before its first value.
                defer { join.finish() }
                var values: [KeyValue] = []
                for try await kv in Election(session: secondSession, prefix: "e").observe() {
                    values.append(kv)
                    join.yield()
                    if kv.valueString == "second-2" { break }
                }
                return values
            }
            var joinedIterator = joined.makeAsyncIterator()
            _ = await joinedIterator.next()
            let challenger = Task { try await second.campaign("second-1") }
            for n in 2...5 { try await first.proclaim("first-\(n)") }
            try await first.resign()
            try await challenger.value
            try await second.proclaim("second-2")
            let values = try await observed.value
            // Never out of order, nothing missed: a new leader's first value included.
            let names = values.map(\.valueString)
            #expect(names == ["first-1", "first-2", "first-3", "first-4", "first-5", "second-1", "second-2"])
        }
    }

    @Test func observeEndsWithCompactedWhenItsHistoryIsGone() async throws {
        try await withStore { store, _ in
            let election = Election(session: try await Session(client: store, ttl: 10), prefix: "e")
            try await election.campaign("a")
            let before = try await election.leader().modRevision
            for n in 0..<3 { try await election.proclaim("v\(n)") }
            _ = try await store.compact(try await store.put("other", "x").header.revision)
            var iterator = election.observe(startRevision: before).makeAsyncIterator()
            do {
                let kv = try await iterator.next()
                Issue.record("observe from a compacted revision yielded \(String(describing: kv))")
            } catch let error as CoordinationError {
                #expect(error.code == .compacted)
            }
        }
    }

    @Test func observeFromAnOlderRevisionReplaysTheLeadersValuesSinceThen() async throws {
        try await withStore { store, _ in
            let election = Election(session: try await Session(client: store, ttl: 10), prefix: "e")
            try await election.campaign("a")
            let before = try await election.leader().modRevision
            try await election.proclaim("b")
            try await election.proclaim("c")
            var values: [String] = []
            for try await kv in election.observe(startRevision: before) {
                values.append(kv.valueString)
                if values.count == 3 { break }
            }
            #expect(values == ["a", "b", "c"])
        }
    }

    @Test func cancellingACampaignWithdrawsTheCandidate() async throws {
        try await withStore { store, _ in
            let leader = Election(session: try await Session(client: store, ttl: 10), prefix: "e")
            try await leader.campaign("leader")
            let session = try await Session(client: store, ttl: 10)
            let waiting = Task { try await Election(session: session, prefix: "e").campaign("waiting") }
            let key = Array("e/\(session.leaseKeySuffix)".utf8)
            #expect(await eventually { (try? await store.get(key).count) == 1 })
            waiting.cancel()
            _ = await waiting.result
            #expect(try await store.get(key).count == 0)
        }
    }
}
