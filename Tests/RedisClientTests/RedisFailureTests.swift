import Foundation
import Testing
@testable import RedisClient

@Suite struct RedisFailureTests {
    @Test(arguments: Engine.allCases)
    func serverKilledMidPipelineFailsInFlightRequestsAsOutcomeUnknown(engine: Engine) async throws {
        let server = try await RedisServer.start()
        let connection = try await engine.connect(server.configuration)
        let observer = try await RedisConnection.connect(server.configuration)
        // BLPOP holds the connection; the INCRs are pipelined behind it. Queued in this
        // order for certain (the callback form queues before it returns: tasks could
        // queue an INCR first on a busy machine, and it would then be answered).
        let (outcomes, outcome) = AsyncStream<RedisError?>.makeStream()
        let record: @Sendable (Result<RedisReply, any Error>) -> Void = { result in
            if case .failure(let error) = result { outcome.yield(error as? RedisError ?? RedisError(.protocolError, "\(error)")) } else { outcome.yield(nil) }
        }
        connection.send([Array("BLPOP".utf8), Array("never".utf8), Array("30".utf8)], timeout: .seconds(60), completion: record)
        for _ in 0..<500 { connection.send([Array("INCR".utf8), Array("n".utf8)], timeout: nil, completion: record) }
        let results = Task {
            var errors: [RedisError?] = []
            for await error in outcomes {
                errors.append(error)
                if errors.count == 501 { break }
            }
            return errors
        }
        // Killed only once every INCR has reached Redis: all 500 (21 bytes each) wait in
        // the blocked client's query buffer (a fixed pause could kill it before the last
        // ones were written, and those would rightly be connectionLost).
        let written = try await eventually(timeout: .seconds(20)) {
            let clients = try await observer.send("CLIENT", "LIST").string ?? ""
            return clients.split(separator: "\n").contains { line in
                guard line.contains("cmd=blpop"), let field = line.split(separator: " ").first(where: { $0.hasPrefix("qbuf=") }) else { return false }
                return (Int(field.dropFirst("qbuf=".count)) ?? 0) >= 500 * 21
            }
        }
        #expect(written, "the blocked client's pipelined INCRs never all reached Redis")
        await server.kill()
        let errors = await results.value
        #expect(errors.count == 501)
        #expect(errors.allSatisfy { $0 != nil }, "a request succeeded on a server that was killed before it could answer")
        // Every request was written before the kill: none may claim it is safe to retry.
        let codes = Set(errors.compactMap { $0?.code })
        #expect(codes == [.outcomeUnknown], "\(codes)")
        #expect(errors.compactMap { $0 }.first { $0.code == .outcomeUnknown }?.message.contains("may or may not have run") == true)

        // While the server is down, requests fail fast instead of hanging.
        let down = await redisError { try await connection.send("PING") }
        #expect(down?.code == .connectionRefused)

        try await server.restart()
        #expect(try await connection.send("PING") == .status("PONG"))
        #expect(try await connection.send("INCR", "n") == .integer(1))
        await connection.close()
        await observer.close()
        await server.stop()
    }

    @Test func requestsNotWrittenWhenTheConnectionDiesAreConnectionLost() async throws {
        let server = try await RedisServer.start()
        let connection = try await RedisConnection.connect(server.configuration)
        // A stopped server reads nothing: a 10 MB request cannot be written completely.
        kill(server.pid, SIGSTOP)
        // Queued in this order for certain (the callback form queues before it returns;
        // two tasks could queue the PING first on a busy machine, and the PING alone is
        // then written: a CI run saw exactly that).
        let command: [[UInt8]] = [Array("SET".utf8), Array("big".utf8), [UInt8](repeating: 7, count: 10 << 20)]
        let bigResult = AsyncStream<RedisError?>.makeStream()
        let behindResult = AsyncStream<RedisError?>.makeStream()
        connection.send(command, timeout: nil) { result in
            if case .failure(let error) = result { bigResult.continuation.yield(error as? RedisError) } else { bigResult.continuation.yield(nil) }
        }
        connection.send([Array("PING".utf8)], timeout: nil) { result in
            if case .failure(let error) = result { behindResult.continuation.yield(error as? RedisError) } else { behindResult.continuation.yield(nil) }
        }
        try await Task.sleep(for: .milliseconds(300))
        await server.kill()
        var bigIterator = bigResult.stream.makeAsyncIterator()
        var behindIterator = behindResult.stream.makeAsyncIterator()
        let bigError = await bigIterator.next() ?? nil
        let behindError = await behindIterator.next() ?? nil
        #expect(bigError?.code == .connectionLost, "\(String(describing: bigError))")
        #expect(bigError?.message.contains("retrying is safe") == true)
        #expect(behindError?.code == .connectionLost, "\(String(describing: behindError))")
        try await server.restart()
        #expect(try await connection.send("EXISTS", "big") == .integer(0))
        await connection.close()
        await server.stop()
    }

    @Test(arguments: Engine.allCases)
    func clientKillIsSurvivedByTheNextRequest(engine: Engine) async throws {
        try await withConnection(engine: engine) { server, connection in
            let admin = try await RedisConnection.connect(server.configuration)
            let id = try await connection.send("CLIENT", "ID").int ?? -1
            #expect(try await admin.send("CLIENT", "KILL", "ID", id) == .integer(1))
            // The kill may race with the next request; either it fails as lost or it succeeds on a new connection.
            #expect(await eventually {
                (try? await connection.send("PING")) == .status("PONG")
            })
            let newID = try await connection.send("CLIENT", "ID").int ?? -1
            #expect(newID != id)
            await admin.close()
        }
    }

    @Test(arguments: Engine.allCases)
    func wrongPasswordIsAuthenticationFailed(engine: Engine) async throws {
        try await RedisServer.withServer(.init(password: "s3cret")) { server in
            var wrong = server.configuration
            wrong.password = "nope"
            let error = await redisError { _ = try await engine.connect(wrong) }
            #expect(error?.code == .authenticationFailed)
            #expect(error?.message.contains("rejected the password") == true)

            var missing = server.configuration
            missing.password = nil
            let noAuth = await redisError { _ = try await engine.connect(missing) }
            #expect(noAuth?.code == .authenticationFailed)
            #expect(noAuth?.message.contains("requires a password") == true)

            let right = try await engine.connect(url: server.url)
            #expect(try await right.send("PING") == .status("PONG"))
            await right.close()
        }
        try await RedisServer.withServer { server in
            var extra = server.configuration
            extra.password = "unexpected"
            let error = await redisError { _ = try await engine.connect(extra) }
            #expect(error?.code == .authenticationFailed)
            #expect(error?.message.contains("none configured") == true)
        }
    }

    @Test func aclUserAuthenticatesAndIsLimitedByItsRules() async throws {
        let user = RedisServer.ACLUser(name: "app", password: "app-pw", rules: "~app:* &* +@all -flushdb")
        try await RedisServer.withServer(.init(transport: .tcp(), aclUsers: [user])) { server in
            guard case .tcp(let host, let port) = server.endpoint else { return }
            let connection = try await RedisConnection.connect(url: "redis://app:app-pw@\(host):\(port)")
            #expect(try await connection.send("ACL", "WHOAMI").string == "app")
            #expect(try await connection.send("SET", "app:x", "1") == .status("OK"))
            let denied = await redisError { try await connection.send("SET", "other:x", "1") }
            #expect(denied?.code == .noPermission)
            #expect(denied?.message.contains("ACL") == true)
            let flush = await redisError { try await connection.send("FLUSHDB") }
            #expect(flush?.code == .noPermission)
            await connection.close()

            let wrong = await redisError { _ = try await RedisConnection.connect(url: "redis://app:bad@\(host):\(port)") }
            #expect(wrong?.code == .authenticationFailed)
            #expect(wrong?.message.contains("user 'app'") == true)
            let noPassword = await redisError {
                _ = try await RedisConnection.connect(RedisConfiguration(endpoint: server.endpoint, username: "app"))
            }
            #expect(noPassword?.code == .authenticationFailed)
        }
    }
}
