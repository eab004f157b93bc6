import CoordinationPrimitives
import Foundation
@testable import RedisClient
import Synchronization
import Testing

/// Which fortress a scenario runs against.
enum FortressKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// ``LocalFortress``: guard and guests in one process.
    case local
    /// ``Fortress``: guard and guests as different processes would have them (own
    /// client and session each), sharing a store and a prefix.
    case distributed

    var testDescription: String { rawValue }
}

/// juju's worker/fortress tests (fortress_test.go, occupy_test.go), run against both
/// fortresses, plus what only the distributed one has (leases, processes, coordctl).
@Suite(.timeLimit(.minutes(3)))
struct FortressTests {
    // MARK: - fortress_test.go

    @Test(arguments: FortressKind.allCases)
    func startsLocked(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await assertLocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func lockdownOfANewFortressReturnsAtOnceAndKeepsItLocked(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await within { try await fortress.guardRole.lockdown() }
            try await assertLocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func unlockLetsVisitsIn(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            try await assertUnlocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func unlockingTwiceKeepsItUnlocked(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            try await fortress.guardRole.unlock()
            try await assertUnlocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func lockingDownTwiceKeepsItLocked(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            try await within { try await fortress.guardRole.lockdown() }
            try await within { try await fortress.guardRole.lockdown() }
            try await assertLocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func separateFortressesAreIndependent(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let other = try await fortress.another()
            try await other.guardRole.unlock()
            try await assertLocked(fortress.guest)
            try await assertUnlocked(other.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func visitReturnsWhatItsBodyReturns(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            let value = try await within { try await fortress.guest.visit { 42 } }
            #expect(value == 42)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func visitRethrowsItsBodysError(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            try await assertUnlocked(fortress.guest)  // a visit whose body throws Bad
        }
    }

    @Test(arguments: FortressKind.allCases)
    func tenConcurrentVisitsRunTogether(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            let guest = fortress.guest
            let inside = Locked(0)
            let release = Gate()
            let visits = (0..<10).map { index in
                Task {
                    try await guest.visit {
                        inside.withLock { $0 += 1 }
                        await release.wait()
                        return index
                    }
                }
            }
            // All ten are inside at the same time...
            #expect(await eventually { inside.value == 10 })
            // ...and a separate visit still gets in.
            try await assertUnlocked(guest)
            release.open()
            var finished: Set<Int> = []
            for visit in visits { finished.insert(try await within { try await visit.value }) }
            #expect(finished == Set(0..<10))
        }
    }

    @Test(arguments: FortressKind.allCases)
    func unlockLetsAWaitingVisitIn(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let guest = fortress.guest
            let visit = Task { try await guest.visit { throw Bad() } }
            #expect(await stillBlocked(visit))
            try await fortress.guardRole.unlock()
            await #expect(throws: Bad.self) { try await within { try await visit.value } }
        }
    }

    @Test(arguments: FortressKind.allCases)
    func lockdownWaitsForRunningVisitsAndRefusesNewOnes(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let running = try await startBlockingVisit(fortress)
            defer { running.release.open() }
            let guardRole = fortress.guardRole
            let lockdown = Task { try await guardRole.lockdown() }
            #expect(await stillBlocked(lockdown))
            // ...including new visits.
            try await assertLocked(fortress.guest)
            #expect(await stillBlocked(lockdown, after: .milliseconds(50)))
            running.release.open()
            try await within { try await lockdown.value }
            #expect(try await within { try await running.visit.value } == "done")
            try await assertLocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func cancelledLockdownThrowsAbortedAndTheFortressStaysLocked(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let running = try await startBlockingVisit(fortress)
            defer { running.release.open() }
            let guardRole = fortress.guardRole
            let lockdown = Task { try await guardRole.lockdown() }
            #expect(await stillBlocked(lockdown))
            lockdown.cancel()
            let error = await concurrencyError { try await within { try await lockdown.value } }
            #expect(error?.code == .aborted)
            // Locked already, even as the old visit goes on.
            try await assertLocked(fortress.guest)
            #expect(await stillBlocked(running.visit, after: .milliseconds(50)))
        }
    }

    @Test(arguments: FortressKind.allCases)
    func unlockAfterAnAbortedLockdownLetsVisitsInAtOnce(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let running = try await startBlockingVisit(fortress)
            defer { running.release.open() }
            let guardRole = fortress.guardRole
            let lockdown = Task {
                withUnsafeCurrentTask { $0?.cancel() }  // aborted before it is called
                try await guardRole.lockdown()
            }
            let error = await concurrencyError { try await within { try await lockdown.value } }
            #expect(error?.code == .aborted)
            try await assertLocked(fortress.guest)
            try await guardRole.unlock()
            try await assertUnlocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func visitCancelledBeforeItStartsThrowsAbortedAndNeverRuns(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let guest = fortress.guest
            let ran = Latch()
            let visit = Task { try await guest.visit { ran.open() } }
            #expect(await stillBlocked(visit))
            visit.cancel()
            let error = await concurrencyError { try await within { try await visit.value } }
            #expect(error?.code == .aborted)
            try await fortress.guardRole.unlock()
            try await assertUnlocked(guest)
            #expect(!ran.isOpen)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func startedVisitRunsToCompletionWhenCancelled(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let running = try await startBlockingVisit(fortress)
            defer { running.release.open() }
            running.visit.cancel()
            #expect(await stillBlocked(running.visit))
            let guardRole = fortress.guardRole
            let lockdown = Task { try await guardRole.lockdown() }
            #expect(await stillBlocked(lockdown))
            running.release.open()
            #expect(try await within { try await running.visit.value } == "done")
            try await within { try await lockdown.value }
        }
    }

    @Test(arguments: FortressKind.allCases)
    func callsOnAClosedFortressThrowShutdown(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            fortress.close()
            #expect(await concurrencyError { try await fortress.guardRole.unlock() }?.code == .shutdown)
            #expect(await concurrencyError { try await fortress.guardRole.lockdown() }?.code == .shutdown)
            #expect(await concurrencyError { try await fortress.guest.visit { _ = Issue.record("visited a closed fortress") } }?.code == .shutdown)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func closingWakesBlockedCallsWithShutdownAndLetsRunningVisitsFinish(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let running = try await startBlockingVisit(fortress)
            defer { running.release.open() }
            let guardRole = fortress.guardRole, guest = fortress.guest
            let lockdown = Task { try await guardRole.lockdown() }
            #expect(await stillBlocked(lockdown))
            let waiting = Task { try await guest.visit { _ = Issue.record("visited a closed fortress") } }
            #expect(await stillBlocked(waiting))
            fortress.close()
            #expect(await concurrencyError { try await within { try await lockdown.value } }?.code == .shutdown)
            #expect(await concurrencyError { try await within { try await waiting.value } }?.code == .shutdown)
            running.release.open()
            #expect(try await within { try await running.visit.value } == "done")
        }
    }

    // MARK: - occupy_test.go

    @Test(arguments: FortressKind.allCases)
    func occupyCancelledBeforeTheVisitBeginsThrowsAbortedWithoutRunningTheWorker(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            let guest = fortress.guest
            let ran = Latch()
            let occupation = Task { try await occupy(guest) { ran.open() } }
            #expect(await stillBlocked(occupation))
            occupation.cancel()
            let error = await concurrencyError { _ = try await within { try await occupation.value } }
            #expect(error?.code == .aborted)
            try await fortress.guardRole.unlock()
            try await assertUnlocked(guest)
            #expect(!ran.isOpen)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func occupyPassesTheWorkersErrorThroughAndLockdownFollowsAtOnce(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            let worker = try await within { try await occupy(fortress.guest) { () async throws -> Int in throw Bad() } }
            await #expect(throws: Bad.self) { try await within { try await worker.value } }
            try await within { try await fortress.guardRole.lockdown() }
            try await assertLocked(fortress.guest)
        }
    }

    @Test(arguments: FortressKind.allCases)
    func occupyReturnsOnceTheVisitBeganAndHoldsOffLockdownUntilTheWorkerEnds(_ kind: FortressKind) async throws {
        try await withFortress(kind) { fortress in
            try await fortress.guardRole.unlock()
            let started = Latch()
            let worker = try await within {
                try await occupy(fortress.guest) { () async throws -> String in
                    started.open()
                    try await Task.sleep(for: .seconds(60))  // runs until cancelled
                    return "unreachable"
                }
            }
            #expect(await eventually { started.isOpen })  // the visit has begun; the worker runs concurrently
            let guardRole = fortress.guardRole
            let lockdown = Task { try await guardRole.lockdown() }
            #expect(await stillBlocked(lockdown))
            #expect(await stillBlocked(worker, after: .milliseconds(50)))
            worker.cancel()  // the caller owns the worker
            await #expect(throws: CancellationError.self) { try await within { try await worker.value } }
            try await within { try await lockdown.value }
        }
    }

    // MARK: - Distributed only

    @Test func lastOperationWinsBetweenGuardsInDifferentClients() async throws {
        try await withFortress(.distributed) { fortress in
            let second = try await fortress.anotherGuard()
            try await fortress.guardRole.unlock()
            try await within { try await second.lockdown() }
            try await assertLocked(fortress.guest)
            try await within { try await fortress.guardRole.lockdown() }
            try await second.unlock()
            try await assertUnlocked(fortress.guest)
            // A visit waiting at the gate follows the last operation too.
            try await within { try await second.lockdown() }
            let guest = fortress.guest
            let visit = Task { try await guest.visit { "in" } }
            #expect(await stillBlocked(visit))
            try await fortress.guardRole.unlock()
            #expect(try await within { try await visit.value } == "in")
        }
    }

    @Test func visitKeyHangsOnTheGuestsLeaseAndGoesWhenTheVisitEnds() async throws {
        try await withFortress(.distributed) { fortress in
            let guest = try #require(fortress.guest as? Fortress)
            let store = guest.session.client
            @Sendable func visitKeys() async throws -> [KeyValue] {
                try await store.get(guest.visitPrefix, options: .prefix(guest.visitPrefix)).kvs
            }
            #expect(try await store.get(guest.stateKey).kvs.isEmpty)  // missing: locked
            try await fortress.guardRole.unlock()
            #expect(try await store.get(guest.stateKey).kvs.first?.value == Array("unlocked".utf8))

            let keys = try await guest.visit { try await visitKeys() }
            #expect(keys.count == 1)
            #expect(keys.first?.lease == guest.session.lease)
            let key = String(decoding: keys.first?.key ?? [], as: UTF8.self)
            #expect(key.hasPrefix("/fortress/test/visits/\(guest.session.leaseKeySuffix)/"))
            #expect(try await visitKeys().isEmpty)

            await #expect(throws: Bad.self) { try await guest.visit { throw Bad() } }
            #expect(try await visitKeys().isEmpty)

            let running = try await startBlockingVisit(fortress)
            #expect(try await guest.visitCount() == 1)
            running.visit.cancel()
            running.release.open()
            _ = try await within { try await running.visit.value }
            #expect(try await visitKeys().isEmpty)

            try await within { try await fortress.guardRole.lockdown() }
            #expect(try await store.get(guest.stateKey).kvs.first?.value == Array("locked".utf8))
        }
    }

    @Test func visitWhoseSessionIsLostIsCancelledAndThrowsSessionExpired() async throws {
        try await withFortress(.distributed) { fortress in
            let guest = try #require(fortress.guest as? Fortress)
            try await fortress.guardRole.unlock()
            let started = Latch()
            let visit = Task {
                try await guest.visit {
                    started.open()
                    try await Task.sleep(for: .seconds(60))
                }
            }
            #expect(await eventually { started.isOpen })
            try await guest.session.close()  // the lease goes, and the visit key with it
            let error = await concurrencyError { try await within { try await visit.value } }
            #expect(error?.code == .sessionExpired)
            try await within { try await fortress.guardRole.lockdown() }
        }
    }

    @Test func killedGuestProcessHoldsUpLockdownOnlyForItsSessionTTL() async throws {
        try await withStore { store, server in
            let session = try await Session(client: store, ttl: 60)
            let fortress = Fortress(session: session, prefix: "/fortress/killed")
            try await fortress.unlock()
            let guest = try startCoordctl(["fortress", "visit", "/fortress/killed", "--ttl", "6", "--", "sleep", "60"], url: server.url)
            defer {
                if guest.isRunning {
                    for child in childProcesses(of: guest.processIdentifier) { kill(child, SIGKILL) }
                    kill(guest.processIdentifier, SIGKILL)
                }
            }
            #expect(try await eventually(timeout: .seconds(20)) { try await fortress.visitCount() == 1 })
            // sleep 60, inside the visit (it starts just after the visit key is written)
            #expect(await eventually(timeout: .seconds(20)) { childProcesses(of: guest.processIdentifier).count == 1 })
            let command = childProcesses(of: guest.processIdentifier)
            kill(guest.processIdentifier, SIGKILL)
            for child in command { kill(child, SIGKILL) }
            await waitForExit(guest)
            // The crashed guest's visit is still there (a 6 s lease: room for a loaded
            // machine's delays between the kill and this read; with 2 s, a refresh due
            // just before the kill left too little)...
            #expect(try await fortress.visitCount() == 1)
            // ...until its lease expires: long before the 60 s its command would have run,
            // or the guard's own 60 s session.
            try await within(.seconds(20)) { try await fortress.lockdown() }
            #expect(try await fortress.visitCount() == 0)
            try await session.close()
        }
    }

    @Test func coordctlFortressCommands() async throws {
        try await RedisServer.withServer { server in
            let url = server.url
            let store = try await connectClient(server)
            defer { Task { await store.close() } }
            // A visit waits at the shut gate (a fortress starts locked): its coordctl has
            // made its session (a lease) and is still running well after.
            let locked = try startCoordctl(["fortress", "visit", "charm", "--", "true"], url: url)
            #expect(try await eventually(timeout: .seconds(20)) { try await store.leases().count == 1 || !locked.isRunning })
            #expect(await stillRunning(locked, after: .milliseconds(300)))
            kill(locked.processIdentifier, SIGKILL)
            await waitForExit(locked)
            #expect(try await runCoordctl(["fortress", "unlock", "charm"], url: url)?.output == "charm unlocked\n")
            #expect(try await runCoordctl(["fortress", "visit", "charm", "--", "sh", "-c", "echo inside; exit 3"], url: url)?.status == 3)
            #expect(try await runCoordctl(["fortress", "visit", "charm", "--", "sh", "-c", "echo inside"], url: url)?.output == "inside\n")
            let missing = try await runCoordctl(["fortress", "visit", "charm"], url: url)
            #expect(missing?.status != 0 && missing?.error.contains("give the command") == true)

            // A lockdown reports the visits it waits for. The visit lasts until the test
            // lets it go (a file appears), not for a fixed time.
            let release = FileManager.default.temporaryDirectory.appendingPathComponent("release-\(UUID().uuidString)").path
            defer { unlink(release) }
            let visitor = try startCoordctl(["fortress", "visit", "charm", "--ttl", "5", "--", "sh", "-c",
                                             "while [ ! -e '\(release)' ]; do sleep 0.05; done"], url: url)
            defer { if visitor.isRunning { kill(visitor.processIdentifier, SIGKILL) } }
            #expect(try await eventually(timeout: .seconds(20)) { try await store.get("charm/visits/", options: .prefix(Array("charm/visits/".utf8))).count == 1 })
            let lockdown = try OutputCapture()
            let guardian = try startCoordctl(["fortress", "lockdown", "charm"], url: url, output: lockdown.path)
            defer { if guardian.isRunning { kill(guardian.processIdentifier, SIGKILL) } }
            #expect(await eventually(timeout: .seconds(20)) { lockdown.text.contains("waiting for 1 visit to leave") })
            #expect(guardian.isRunning, "lockdown returned while a visit was running")
            #expect(FileManager.default.createFile(atPath: release, contents: nil))
            await waitForExit(visitor)
            #expect(visitor.terminationStatus == 0)
            await waitForExit(guardian)
            #expect(guardian.terminationStatus == 0)
            #expect(lockdown.text == "charm locked; waiting for 1 visit to leave\ncharm locked down\n")
            // Locked down again: a new visit waits.
            let after = try startCoordctl(["fortress", "visit", "charm", "--", "true"], url: url)
            #expect(await stillRunning(after, after: .milliseconds(500)))
            kill(after.processIdentifier, SIGKILL)
            await waitForExit(after)
        }
    }
}

// MARK: - Fixture

/// A fortress with a guard and a guest; for the distributed kind they live in
/// different clients and sessions, as in different processes.
private struct FortressFixture: Sendable {
    let guardRole: any FortressGuard
    let guest: any FortressGuest
    let close: @Sendable () -> Void
    /// A different fortress of the same kind.
    let another: @Sendable () async throws -> FortressFixture
    /// Another guard of the same fortress, in its own client.
    let anotherGuard: @Sendable () async throws -> any FortressGuard
}

private func withFortress(_ kind: FortressKind, _ body: (FortressFixture) async throws -> Void) async throws {
    switch kind {
    case .local:
        @Sendable func make() -> FortressFixture {
            let fortress = LocalFortress()
            return FortressFixture(guardRole: fortress, guest: fortress, close: { fortress.close() },
                                   another: { make() }, anotherGuard: { fortress })
        }
        try await body(make())
    case .distributed:
        try await withStore { _, server in
            let clients = Locked<[CoordinationClient]>([])
            let sessions = Locked<[Session]>([])
            @Sendable func session() async throws -> Session {
                let client = try await connectClient(server)
                clients.withLock { $0.append(client) }
                let session = try await Session(client: client, ttl: 10)
                sessions.withLock { $0.append(session) }
                return session
            }
            @Sendable func make(_ prefix: String) async throws -> FortressFixture {
                let guardRole = Fortress(session: try await session(), prefix: prefix)
                let guest = Fortress(session: try await session(), prefix: prefix)
                return FortressFixture(
                    guardRole: guardRole, guest: guest, close: { guardRole.close(); guest.close() },
                    another: { try await make(prefix + "-other") },
                    anotherGuard: { Fortress(session: try await session(), prefix: prefix) })
            }
            do {
                try await body(try await make("/fortress/test"))
            } catch {
                for session in sessions.value { try? await session.close() }
                for client in clients.value { await client.close() }
                throw error
            }
            for session in sessions.value { try? await session.close() }
            for client in clients.value { await client.close() }
        }
    }
}

// MARK: - juju's util_test.go

/// juju's `badVisit` error.
private struct Bad: Error, Equatable {}

/// juju's `AssertUnlocked`: a visit gets in (and its body's error comes out).
private func assertUnlocked(_ guest: any FortressGuest, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    do {
        try await within { try await guest.visit { throw Bad() } }
        Issue.record("the visit's error was lost", sourceLocation: sourceLocation)
    } catch is Bad {
    } catch {
        Issue.record("the fortress is not unlocked: \(error)", sourceLocation: sourceLocation)
    }
}

/// juju's `AssertLocked`: a visit stays blocked, and cancelling it aborts it.
private func assertLocked(_ guest: any FortressGuest, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let visit = Task { try await guest.visit { throw Bad() } }
    #expect(await stillBlocked(visit), "the fortress let a visit in", sourceLocation: sourceLocation)
    visit.cancel()
    let error = await concurrencyError { try await within { try await visit.value } }
    #expect(error?.code == .aborted, "the blocked visit was not aborted", sourceLocation: sourceLocation)
}

/// A visit that has started and waits inside until released.
private struct BlockingVisit {
    let visit: Task<String, any Error>
    let release: Gate
}

/// juju's `startBlockingVisit`: unlocks, starts a visit and waits until it is inside;
/// the body ignores cancellation and returns "done" once released.
private func startBlockingVisit(_ fortress: FortressFixture) async throws -> BlockingVisit {
    try await fortress.guardRole.unlock()
    let started = Latch()
    let release = Gate()
    let guest = fortress.guest
    let visit = Task {
        try await guest.visit {
            started.open()
            await release.wait()
            return "done"
        }
    }
    guard await eventually(timeout: .seconds(5), { started.isOpen }) else {
        release.open()
        throw TimedOut(limit: .seconds(5))
    }
    return BlockingVisit(visit: visit, release: release)
}

/// A one-shot async gate whose `wait()` ignores cancellation (a body that runs to
/// completion whatever happens to its task).
private final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}

// MARK: - coordctl processes

/// The built coordctl: next to the test bundle, else in a scratch directory of the package.
private func coordctlExecutable() throws -> URL {
    let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let candidates = [Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("coordctl"),
                      package.appendingPathComponent(".build-fortress/debug/coordctl"),
                      package.appendingPathComponent(".build/debug/coordctl")]
    guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw RedisError(.serverNotFound, "coordctl is not built; run swift build first")
    }
    return executable
}

/// Starts coordctl with `arguments` against the store at `url`; its output goes to
/// `output` (default: nowhere).
private func startCoordctl(_ arguments: [String], url: String, output: String? = nil, error: String? = nil) throws -> PipedProcess {
    try PipedProcess(try coordctlExecutable().path, arguments,
                     environment: ["REDIS_URL": url, "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                     stdin: .null, stdout: output.map { .file($0) } ?? .null, stderr: error.map { .file($0) } ?? .null)
}

/// Waits for `process` to exit, on a thread of its own (never blocking the cooperative pool).
private func waitForExit(_ process: PipedProcess) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        Thread.detachNewThread {
            process.waitUntilExit()
            continuation.resume()
        }
    }
}

/// Whether `process` is still running after `delay` (it should be waiting).
private func stillRunning(_ process: PipedProcess, after delay: Duration) async -> Bool {
    try? await Task.sleep(for: delay)
    return process.isRunning
}

/// A file that collects a child's output, readable while the child runs.
private final class OutputCapture: Sendable {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("output-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: path, contents: nil)
    }

    var text: String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    deinit {
        unlink(path)
    }
}

/// Runs coordctl to completion; `nil` when it is still running after `timeout` (then killed).
private func runCoordctl(_ arguments: [String], url: String, timeout: Duration = .seconds(10)) async throws -> (status: Int32, output: String, error: String)? {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fortress-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outputURL = directory.appendingPathComponent("out"), errorURL = directory.appendingPathComponent("err")
    _ = FileManager.default.createFile(atPath: outputURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errorURL.path, contents: nil)
    let process = try startCoordctl(arguments, url: url, output: outputURL.path, error: errorURL.path)
    let deadline = ContinuousClock.now + timeout
    while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    if process.isRunning {
        for child in childProcesses(of: process.processIdentifier) { kill(child, SIGKILL) }
        kill(process.processIdentifier, SIGKILL)
        await waitForExit(process)
        return nil
    }
    await waitForExit(process)
    return (process.terminationStatus,
            String(decoding: (try? Data(contentsOf: outputURL)) ?? Data(), as: UTF8.self),
            String(decoding: (try? Data(contentsOf: errorURL)) ?? Data(), as: UTF8.self))
}

/// The direct children of process `pid` (Linux: /proc/<pid>/task/<thread>/children of
/// every thread, since the thread that spawned a child is the one that lists it).
private func childProcesses(of pid: Int32) -> [Int32] {
    let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return threads.flatMap { thread -> [Int32] in
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}
