import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import RedisClient

/// A connection whose socket an event loop serves (coordproxy's store connection). The
/// tests the thread's connection passes run for it too (`Engine.allCases`); these are
/// its own.
@Suite struct EventLoopEngineTests {
    /// The point of the engine: a reply is handed over on the loop that serves the
    /// socket, where the server's requests run, not on another thread.
    @Test func repliesAreHandedOverOnTheLoopThatServesTheSocket() async throws {
        try await RedisServer.withServer { server in
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let connection = try await RedisConnection.connect(server.configuration, on: loop, setup: { _ in })
            let (stream, continuation) = AsyncStream<Bool>.makeStream()
            // From the loop and from elsewhere: every reply arrives on the loop.
            loop.execute {
                connection.send([Array("PING".utf8)], timeout: nil) { _ in continuation.yield(loop.inEventLoop) }
            }
            for _ in 0..<20 {
                connection.send([Array("INCR".utf8), Array("n".utf8)], timeout: nil) { _ in continuation.yield(loop.inEventLoop) }
            }
            var seen: [Bool] = []
            for await onLoop in stream {
                seen.append(onLoop)
                if seen.count == 21 { break }
            }
            #expect(seen.allSatisfy { $0 }, "\(seen)")
            #expect(try await connection.send("GET", "n").int == 20)
            await connection.close()
        }
    }

    /// The store's hello runs in the setup: at every connect, before any request that
    /// waited for the connection.
    @Test func setupRunsAtEveryConnectBeforeTheRequestsThatWaited() async throws {
        try await RedisServer.withServer { server in
            let connects = Atomic<Int>(0)
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let connection = try await RedisConnection.connect(server.configuration, on: loop) { channel in
                let number = connects.add(1, ordering: .relaxed).newValue
                _ = try channel.send([Array("RPUSH".utf8), Array("order".utf8), Array("setup \(number)".utf8)])
            }
            let admin = try await RedisConnection.connect(server.configuration)
            #expect(try await connection.send("RPUSH", "order", "request 1") == .integer(2))
            let id = try await connection.send("CLIENT", "ID").int ?? -1
            #expect(try await admin.send("CLIENT", "KILL", "ID", id) == .integer(1))
            // The next requests find the connection gone (or going): the first that finds
            // none connects again, and they all run after the setup.
            #expect(await eventually {
                (try? await connection.send("PING")) == .status("PONG")
            })
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<10 { group.addTask { _ = try await connection.send("RPUSH", "order", "request 2") } }
                try await group.waitForAll()
            }
            let order = try await admin.send("LRANGE", "order", 0, -1).array?.compactMap(\.string) ?? []
            #expect(connects.load(ordering: .relaxed) == 2)
            #expect(order == ["setup 1", "request 1", "setup 2"] + Array(repeating: "request 2", count: 10), "\(order)")
            #expect(try await connection.send("CLIENT", "ID").int != id)
            await admin.close()
            await connection.close()
        }
    }

    /// A connect whose setup throws fails the requests that waited for it with the
    /// setup's error; the next request tries again.
    @Test func aFailedConnectFailsTheRequestsThatWaitedAndTheNextOneConnects() async throws {
        try await RedisServer.withServer { server in
            let refuse = Atomic<Bool>(false)
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let connection = try await RedisConnection.connect(server.configuration, on: loop) { _ in
                if refuse.load(ordering: .relaxed) { throw RedisError(.noPermission, "setup refused for the test") }
            }
            let admin = try await RedisConnection.connect(server.configuration)
            let id = try await connection.send("CLIENT", "ID").int ?? -1
            refuse.store(true, ordering: .relaxed)
            #expect(try await admin.send("CLIENT", "KILL", "ID", id) == .integer(1))
            #expect(await eventually {
                await redisError { try await connection.send("PING") }?.code == .noPermission
            })
            refuse.store(false, ordering: .relaxed)
            #expect(try await connection.send("PING") == .status("PONG"))
            await admin.close()
            await connection.close()
        }
    }
    /// A connection that dies right after its handshake, with requests waiting for it
    /// (Redis closed it while they were written): each of them ends, with a reply or an
    /// error, none is left waiting, and the next request connects again.
    @Test func aConnectionThatDiesRightAfterItsHandshakeLeavesNoRequestWaiting() async throws {
        try await RedisServer.withServer { server in
            let killNext = Atomic<Bool>(false)
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let connection = try await RedisConnection.connect(server.configuration, on: loop) { channel in
                guard killNext.exchange(false, ordering: .relaxed) else { return }
                // Redis answers, then closes the connection the loop is about to take over.
                let id = try channel.send([Array("CLIENT".utf8), Array("ID".utf8)]).int ?? -1
                _ = try channel.send(["CLIENT", "KILL", "ID", String(id), "SKIPME", "no"].map { Array($0.utf8) })
            }
            let admin = try await RedisConnection.connect(server.configuration)
            let id = try await connection.send("CLIENT", "ID").int ?? -1
            killNext.store(true, ordering: .relaxed)
            #expect(try await admin.send("CLIENT", "KILL", "ID", id) == .integer(1))
            let outcomes = Mutex<[Result<RedisReply, any Error>]>([])
            for _ in 0..<20 {
                connection.send([Array("INCR".utf8), Array("n".utf8)], timeout: .seconds(20)) { result in
                    outcomes.withLock { $0.append(result) }
                }
            }
            let ended = await eventually(timeout: .seconds(30)) { outcomes.withLock { $0.count } == 20 }
            #expect(ended, "\(outcomes.withLock { $0.count }) of 20 requests ended")
            for outcome in outcomes.withLock({ $0 }) {
                if case .failure(let error) = outcome {
                    let code = (error as? RedisError)?.code
                    #expect(code == .connectionLost || code == .outcomeUnknown || code == .connectionRefused, "\(error)")
                }
            }
            #expect(try await connection.send("PING") == .status("PONG"))
            let applied = try await admin.send("GET", "n").int ?? 0
            #expect(applied == Int64(outcomes.withLock { $0.filter { (try? $0.get()) != nil }.count }))
            await connection.close()
            await admin.close()
        }
    }
    /// A caller cancelled while its request waits for a connect (Redis answers the
    /// handshake slowly) gets `CancellationError` at once, and the request never runs:
    /// the connect that completes later writes only the requests still waiting.
    @Test func aCancelledRequestThatWaitsForAConnectIsWithdrawnAndNeverRuns() async throws {
        try await RedisServer.withServer { server in
            let hold = Atomic<Bool>(false)
            let held = Atomic<Bool>(false)
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let connection = try await RedisConnection.connect(server.configuration, on: loop) { _ in
                // On NIO's thread pool: the handshake of the next connect waits here.
                guard hold.load(ordering: .relaxed) else { return }
                held.store(true, ordering: .relaxed)
                while hold.load(ordering: .relaxed) { usleep(1_000) }
            }
            let admin = try await RedisConnection.connect(server.configuration)
            let id = try await connection.send("CLIENT", "ID").int ?? -1
            hold.store(true, ordering: .relaxed)
            #expect(try await admin.send("CLIENT", "KILL", "ID", id) == .integer(1))
            // Until the engine has seen the loss, a request would go to the dead socket.
            #expect(await eventually(timeout: .seconds(10)) { connection.engine.keepAliveEnabled() == nil })
            let ended = Atomic<Bool>(false)
            let cancelled = Task {
                defer { ended.store(true, ordering: .relaxed) }
                return try await connection.send("INCR", "n")
            }
            // Only that request exists yet: the connect it waits for has begun.
            #expect(await eventually(timeout: .seconds(10)) { held.load(ordering: .relaxed) })
            let untouched = Task { try await connection.send("INCR", "m") }
            cancelled.cancel()
            let endedWhileHeld = await eventually(timeout: .seconds(5)) { ended.load(ordering: .relaxed) }
            hold.store(false, ordering: .relaxed)
            #expect(endedWhileHeld, "the cancelled request waited for the connect")
            let outcome = await cancelled.result
            #expect(throws: CancellationError.self) { try outcome.get() }
            // The other request that waited runs once the connect completes; the
            // cancelled one never does.
            #expect(try await untouched.value == .integer(1))
            #expect(try await admin.send("GET", "n") == .null, "the cancelled INCR ran")
            await admin.close()
            await connection.close()
        }
    }
}
