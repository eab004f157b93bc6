import Synchronization
import Testing
@testable import RedisClient

@Suite struct RedisSubscriberTests {
    @Test func deliversChannelAndPatternMessagesInOrder() async throws {
        try await withConnection { server, publisher in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            let received = try await subscriber.subscribe(channels: ["news"], patterns: ["log.*"]) { subscription in
                for index in 0..<50 { try await publisher.send("PUBLISH", "news", "n\(index)") }
                try await publisher.send("PUBLISH", "log.error", [UInt8]([0, 1, 2]))
                var messages: [RedisPubSubMessage] = []
                for try await event in subscription {
                    if case .message(let message) = event { messages.append(message) }
                    if messages.count == 51 { break }
                }
                return messages
            }
            #expect(received.prefix(50).map { String(decoding: $0.payload, as: UTF8.self) } == (0..<50).map { "n\($0)" })
            #expect(received.prefix(50).allSatisfy { $0.channel == "news" && $0.pattern == nil })
            #expect(received.last == RedisPubSubMessage(channel: "log.error", pattern: "log.*", payload: [0, 1, 2]))
            await subscriber.close()
        }
    }

    @Test func aHandlerGetsEveryEventInOrderAndTheStreamOnlyItsEnd() async throws {
        try await withConnection { server, publisher in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            let received = Mutex<[RedisSubscriptionEvent]>([])
            let streamed = try await subscriber.subscribe(channels: ["wake"], onEvent: { event in
                received.withLock { $0.append(event) }
            }) { subscription in
                for index in 0..<20 { try await publisher.send("PUBLISH", "wake", "m\(index)") }
                #expect(await eventually { received.withLock { $0.count } == 20 })
                #expect(try await publisher.send("CLIENT", "KILL", "TYPE", "pubsub").int == 1)
                #expect(await eventually { received.withLock { $0.last } == .reconnected })
                try await publisher.send("PUBLISH", "wake", "after")
                #expect(await eventually { received.withLock { $0.count } == 22 })
                // Nothing went to the stream: it ends (and yields nothing) when the subscriber closes.
                let drain = Task { () -> Int in
                    var count = 0
                    do { for try await _ in subscription { count += 1 } } catch {}
                    return count
                }
                await subscriber.close()
                return await drain.value
            }
            let events = received.withLock { $0 }
            #expect(events.prefix(20) == (0..<20).map { .message(RedisPubSubMessage(channel: "wake", payload: Array("m\($0)".utf8))) }[...])
            #expect(events[20] == .reconnected)
            #expect(events[21] == .message(RedisPubSubMessage(channel: "wake", payload: Array("after".utf8))))
            #expect(streamed == 0)
        }
    }

    @Test func sharedChannelIsUnsubscribedWhenTheLastSubscriptionEnds() async throws {
        try await withConnection { server, publisher in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            try await subscriber.subscribe(channels: ["shared"]) { outer in
                var outerIterator = outer.makeAsyncIterator()
                try await subscriber.subscribe(channels: ["shared"]) { inner in
                    try await publisher.send("PUBLISH", "shared", "one")
                    var innerIterator = inner.makeAsyncIterator()
                    #expect(try await innerIterator.next() == .message(RedisPubSubMessage(channel: "shared", payload: Array("one".utf8))))
                    #expect(try await outerIterator.next() == .message(RedisPubSubMessage(channel: "shared", payload: Array("one".utf8))))
                }
                // The inner subscription ended; the channel stays subscribed for the outer one.
                #expect(try await publisher.send("PUBLISH", "shared", "two") == .integer(1))
                #expect(try await outerIterator.next() == .message(RedisPubSubMessage(channel: "shared", payload: Array("two".utf8))))
            }
            #expect(try await eventually {
                try await publisher.send("PUBSUB", "NUMSUB", "shared") == .array([.bulkString(Array("shared".utf8)), .integer(0)])
            })
            await subscriber.close()
        }
    }

    @Test func resubscribesAfterClientKillAndSaysMessagesMayHaveBeenMissed() async throws {
        try await withConnection { server, publisher in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            try await subscriber.subscribe(channels: ["events"], patterns: ["p:*"]) { subscription in
                var iterator = subscription.makeAsyncIterator()
                try await publisher.send("PUBLISH", "events", "before")
                #expect(try await iterator.next() == .message(RedisPubSubMessage(channel: "events", payload: Array("before".utf8))))

                #expect(try await publisher.send("CLIENT", "KILL", "TYPE", "pubsub").int == 1)
                #expect(try await iterator.next() == .reconnected)

                #expect(try await publisher.send("PUBLISH", "events", "after") == .integer(1))
                #expect(try await iterator.next() == .message(RedisPubSubMessage(channel: "events", payload: Array("after".utf8))))
                #expect(try await publisher.send("PUBLISH", "p:x", "pattern-after") == .integer(1))
                #expect(try await iterator.next() == .message(RedisPubSubMessage(channel: "p:x", pattern: "p:*", payload: Array("pattern-after".utf8))))
            }
            await subscriber.close()
        }
    }

    @Test func everySubscriptionIsActiveWhenSubscribeReturns() async throws {
        try await withConnection { server, publisher in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            // Many subscriptions to one channel at once: each one, as soon as it is
            // active, publishes and must receive its own message.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        try await subscriber.subscribe(channels: ["busy"]) { subscription in
                            try await publisher.send("PUBLISH", "busy", "from-\(index)")
                            for try await event in subscription {
                                if case .message(let message) = event, message.payload == Array("from-\(index)".utf8) { return }
                            }
                            Issue.record("subscription \(index) ended without its message")
                        }
                    }
                }
                try await group.waitForAll()
            }
            await subscriber.close()
        }
    }

    @Test func aChannelRefusedAfterReconnectEndsItsSubscriptionWithTheError() async throws {
        let user = RedisServer.ACLUser(name: "app", password: "pw", rules: "~* resetchannels &allowed +@all")
        try await withConnection(.init(aclUsers: [user])) { server, admin in
            var configuration = server.configuration
            configuration.username = "app"
            configuration.password = "pw"
            let subscriber = try await RedisSubscriber.connect(configuration)
            let error = await redisError {
                try await subscriber.subscribe(channels: ["allowed"]) { subscription in
                    #expect(try await admin.send("ACL", "SETUSER", "app", "resetchannels") == .status("OK"))
                    _ = try? await admin.send("CLIENT", "KILL", "USER", "app")
                    for try await _ in subscription {}
                }
            }
            #expect(error?.code == .noPermission, "\(String(describing: error))")
            await subscriber.close()
        }
    }

    @Test func closingTheSubscriberEndsSubscriptions() async throws {
        try await RedisServer.withServer { server in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            let error = await redisError {
                try await subscriber.subscribe(channels: ["c"]) { subscription in
                    Task { await subscriber.close() }
                    for try await _ in subscription {}
                }
            }
            #expect(error?.code == .connectionClosed)
        }
    }

    @Test func subscribingToNothingIsAnError() async throws {
        try await RedisServer.withServer { server in
            let subscriber = try await RedisSubscriber.connect(server.configuration)
            let error = await redisError { try await subscriber.subscribe { _ in } }
            #expect(error?.code == .invalidArgument)
            await subscriber.close()
        }
    }
}
