import Synchronization

/// A message published on a channel.
public struct RedisPubSubMessage: Sendable, Hashable {
    /// The channel the message was published on.
    public var channel: String
    /// The pattern that matched, for messages received through PSUBSCRIBE.
    public var pattern: String?
    /// The published bytes.
    public var payload: [UInt8]

    /// Creates a message.
    public init(channel: String, pattern: String? = nil, payload: [UInt8]) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }
}

/// What a subscription delivers.
public enum RedisSubscriptionEvent: Sendable, Hashable {
    /// A message on one of the subscription's channels or patterns.
    case message(RedisPubSubMessage)
    /// The connection was lost and has been re-established and re-subscribed.
    /// Messages published while it was down were missed: re-read whatever state
    /// the messages announce.
    case reconnected
}

/// The events of one subscription, as an AsyncSequence.
///
/// Obtain one from ``RedisSubscriber/subscribe(channels:patterns:_:)``; it ends
/// when that call's body returns or when the subscriber is closed, and throws when
/// the server refuses a channel after a reconnect (for example after an ACL change).
/// Events are buffered without bound until consumed: consume promptly.
public struct RedisSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisSubscriptionEvent
    let stream: AsyncThrowingStream<RedisSubscriptionEvent, any Error>

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.AsyncIterator

        public mutating func next() async throws -> RedisSubscriptionEvent? {
            try await base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: stream.makeAsyncIterator())
    }
}

/// Pub/sub on a connection of its own, shared by any number of subscriptions.
///
/// Each channel or pattern is subscribed on the server once, however many
/// subscriptions want it, and unsubscribed when the last one ends. After the
/// connection is lost the subscriber reconnects with backoff, subscribes again to
/// everything that is wanted, and only then delivers
/// ``RedisSubscriptionEvent/reconnected`` to every subscription.
///
/// ```swift
/// let subscriber = try await RedisSubscriber.connect(configuration)
/// try await subscriber.subscribe(channels: ["news"]) { subscription in
///     for try await event in subscription {
///         if case .message(let message) = event { print(message.payload) }
///     }
/// }
/// ```
public final class RedisSubscriber: Sendable {
    private let registry: SubscriptionRegistry
    private let engine: ConnectionEngine

    /// The configuration of the subscriber's connection.
    public var configuration: RedisConfiguration { engine.configuration }

    private init(registry: SubscriptionRegistry, engine: ConnectionEngine) {
        self.registry = registry
        self.engine = engine
    }

    /// Opens the subscriber's connection.
    ///
    /// - Throws: ``RedisError`` as ``RedisConnection/connect(_:)`` does.
    public static func connect(_ configuration: RedisConfiguration) async throws -> RedisSubscriber {
        let registry = SubscriptionRegistry()
        var hooks = ConnectionEngine.Hooks()
        hooks.push = { reply in registry.dispatch(reply) }
        hooks.setup = { handshake in try registry.resubscribe(handshake) }
        hooks.reconnected = { registry.broadcast(.reconnected) }
        var configuration = configuration
        // A subscription waits for messages indefinitely: only its own commands time out.
        let commandTimeout = configuration.commandTimeout
        configuration.commandTimeout = nil
        let engine = ConnectionEngine(configuration: configuration, hooks: hooks)
        try await engine.start(name: ConnectionEngine.threadName("redis-sub", configuration.endpoint))
        registry.commandTimeout = commandTimeout
        return RedisSubscriber(registry: registry, engine: engine)
    }

    /// Subscribes to channels and patterns for the duration of `body`.
    ///
    /// When this returns, the subscription is active on the server: every message
    /// published afterwards is delivered (or a ``RedisSubscriptionEvent/reconnected``
    /// tells that some may have been missed).
    ///
    /// - Parameters:
    ///   - channels: exact channel names (SUBSCRIBE).
    ///   - patterns: glob patterns (PSUBSCRIBE).
    ///   - body: consumes the subscription; unsubscribes when it returns or throws.
    /// - Throws: ``RedisError`` when subscribing fails, or what `body` throws.
    public func subscribe<Result: Sendable>(
        channels: [String] = [],
        patterns: [String] = [],
        _ body: (RedisSubscription) async throws -> Result
    ) async throws -> Result {
        try await subscribe(channels: channels, patterns: patterns, handler: nil, body)
    }

    /// Subscribes for the duration of `body`, handing every event to `onEvent` on the
    /// subscriber's connection thread as it is read, with no task in between: the
    /// subscription passed to `body` then carries only its end (or the error that
    /// ended it). For wake-ups that must cost no more than a function call (the watch
    /// log reader's); keep `onEvent` short, never block in it and never call back into
    /// this subscriber from it (it runs under the subscriber's lock).
    package func subscribe<Result: Sendable>(
        channels: [String] = [],
        patterns: [String] = [],
        onEvent: @escaping @Sendable (RedisSubscriptionEvent) -> Void,
        _ body: (RedisSubscription) async throws -> Result
    ) async throws -> Result {
        try await subscribe(channels: channels, patterns: patterns, handler: onEvent, body)
    }

    private func subscribe<Result: Sendable>(
        channels: [String],
        patterns: [String],
        handler: (@Sendable (RedisSubscriptionEvent) -> Void)?,
        _ body: (RedisSubscription) async throws -> Result
    ) async throws -> Result {
        guard !channels.isEmpty || !patterns.isEmpty else {
            throw RedisError(.invalidArgument, "subscribe needs at least one channel or pattern")
        }
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: RedisSubscriptionEvent.self)
        let id = try await registry.add(channels: Set(channels), patterns: Set(patterns), continuation: continuation,
                                        handler: handler, engine: engine)
        let result: Result
        do {
            result = try await body(RedisSubscription(stream: stream))
        } catch {
            registry.remove(id: id, engine: engine)
            throw error
        }
        registry.remove(id: id, engine: engine)
        return result
    }

    /// Closes the subscriber's connection; active subscriptions end with
    /// ``RedisError/Code/connectionClosed``. (To PUBLISH, use a ``RedisConnection``.)
    public func close() async {
        registry.finishAll(throwing: RedisError(.connectionClosed, "the subscriber was closed"))
        engine.shutdown()
        await engine.waitForTermination()
    }

    deinit {
        engine.shutdown()
    }
}

/// The subscriptions of one ``RedisSubscriber`` and the channel reference counts.
final class SubscriptionRegistry: Sendable {
    private struct Entry {
        var channels: Set<String>
        var patterns: Set<String>
        var continuation: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.Continuation
        /// Takes the events instead of the stream, on the connection thread.
        var handler: (@Sendable (RedisSubscriptionEvent) -> Void)?

        func deliver(_ event: RedisSubscriptionEvent) {
            if let handler { handler(event) } else { continuation.yield(event) }
        }
    }

    private struct State {
        var nextID = 0
        var entries: [Int: Entry] = [:]
        var byChannel: [String: Set<Int>] = [:]
        var byPattern: [String: Set<Int>] = [:]
        var commandTimeout: Duration? = .seconds(30)
    }

    private let state = Mutex(State())

    var commandTimeout: Duration? {
        get { state.withLock { $0.commandTimeout } }
        set { state.withLock { $0.commandTimeout = newValue } }
    }

    /// Registers a subscription and subscribes on the server to what is new; returns its id
    /// once the server has confirmed.
    func add(
        channels: Set<String>,
        patterns: Set<String>,
        continuation: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.Continuation,
        handler: (@Sendable (RedisSubscriptionEvent) -> Void)? = nil,
        engine: ConnectionEngine
    ) async throws -> Int {
        var assigned = 0
        do {
            try await withUnsafeThrowingContinuation { (done: UnsafeContinuation<Void, any Error>) in
                state.withLock { state in
                    let id = state.nextID
                    state.nextID += 1
                    assigned = id
                    state.entries[id] = Entry(channels: channels, patterns: patterns, continuation: continuation, handler: handler)
                    // SUBSCRIBE is sent for every name, even one already subscribed for
                    // another subscription: it is idempotent on the server, and its reply
                    // is what proves that this subscription is active (or refused).
                    var commands: [[[UInt8]]] = []
                    for channel in channels {
                        commands.append([Array("SUBSCRIBE".utf8), Array(channel.utf8)])
                        state.byChannel[channel, default: []].insert(id)
                    }
                    for pattern in patterns {
                        commands.append([Array("PSUBSCRIBE".utf8), Array(pattern.utf8)])
                        state.byPattern[pattern, default: []].insert(id)
                    }
                    if commands.isEmpty {
                        done.resume()
                        return
                    }
                    // Enqueued under the lock so that SUBSCRIBE and UNSUBSCRIBE of one
                    // channel reach the server in the order the counts changed.
                    let group = CompletionGroup(count: commands.count, continuation: done)
                    let deadline = MonotonicClock.deadline(after: state.commandTimeout)
                    for command in commands {
                        engine.enqueue(command, deadline: deadline, continuation: .callback { result in group.complete(result) })
                    }
                }
            }
        } catch {
            remove(id: assigned, engine: engine)
            throw error
        }
        return assigned
    }

    /// Ends a subscription and unsubscribes from what nobody else wants.
    func remove(id: Int, engine: ConnectionEngine) {
        state.withLock { state in
            guard let entry = state.entries.removeValue(forKey: id) else { return }
            entry.continuation.finish()
            let deadline = MonotonicClock.deadline(after: state.commandTimeout)
            for channel in entry.channels {
                state.byChannel[channel]?.remove(id)
                if state.byChannel[channel]?.isEmpty == true {
                    state.byChannel[channel] = nil
                    engine.enqueue([Array("UNSUBSCRIBE".utf8), Array(channel.utf8)], deadline: deadline, continuation: .callback { _ in })
                }
            }
            for pattern in entry.patterns {
                state.byPattern[pattern]?.remove(id)
                if state.byPattern[pattern]?.isEmpty == true {
                    state.byPattern[pattern] = nil
                    engine.enqueue([Array("PUNSUBSCRIBE".utf8), Array(pattern.utf8)], deadline: deadline, continuation: .callback { _ in })
                }
            }
        }
    }

    /// Delivers a pushed message; returns `false` for replies that answer a request.
    func dispatch(_ reply: RedisReply) -> Bool {
        guard case .array(let parts) = reply, let kind = parts.first?.bytes else { return false }
        if kind == Array("message".utf8), parts.count == 3, let channel = parts[1].string, let payload = parts[2].bytes {
            let message = RedisPubSubMessage(channel: channel, payload: payload)
            state.withLock { state in
                for id in state.byChannel[channel] ?? [] { state.entries[id]?.deliver(.message(message)) }
            }
            return true
        }
        if kind == Array("pmessage".utf8), parts.count == 4, let pattern = parts[1].string, let channel = parts[2].string, let payload = parts[3].bytes {
            let message = RedisPubSubMessage(channel: channel, pattern: pattern, payload: payload)
            state.withLock { state in
                for id in state.byPattern[pattern] ?? [] { state.entries[id]?.deliver(.message(message)) }
            }
            return true
        }
        return false
    }

    /// Re-subscribes to everything wanted, on a fresh connection, before it is used.
    ///
    /// One command per name, so that each gets exactly one reply. A name the server
    /// now refuses (an ACL change) ends the subscriptions that wanted it with that
    /// error, instead of failing every reconnect forever.
    func resubscribe(_ handshake: BlockingHandshake) throws {
        let (channels, patterns) = state.withLock { state in
            (Array(state.byChannel.keys), Array(state.byPattern.keys))
        }
        let commands = channels.map { (name: $0, isPattern: false) } + patterns.map { (name: $0, isPattern: true) }
        for command in commands {
            try handshake.sendOnly([Array((command.isPattern ? "PSUBSCRIBE" : "SUBSCRIBE").utf8), Array(command.name.utf8)])
        }
        for command in commands {
            var reply = try handshake.readReply()
            while dispatch(reply) { reply = try handshake.readReply() }
            if case .error(let message) = reply {
                refuse(command.name, isPattern: command.isPattern, error: RedisError.fromServerReply(message))
            }
        }
    }

    /// Ends the subscriptions that want `name` with `error` and forgets them.
    private func refuse(_ name: String, isPattern: Bool, error: RedisError) {
        state.withLock { state in
            let ids = (isPattern ? state.byPattern[name] : state.byChannel[name]) ?? []
            for id in ids {
                guard let entry = state.entries.removeValue(forKey: id) else { continue }
                entry.continuation.finish(throwing: error)
                for channel in entry.channels {
                    state.byChannel[channel]?.remove(id)
                    if state.byChannel[channel]?.isEmpty == true { state.byChannel[channel] = nil }
                }
                for pattern in entry.patterns {
                    state.byPattern[pattern]?.remove(id)
                    if state.byPattern[pattern]?.isEmpty == true { state.byPattern[pattern] = nil }
                }
            }
        }
    }

    /// Sends an event to every subscription.
    func broadcast(_ event: RedisSubscriptionEvent) {
        state.withLock { state in
            for entry in state.entries.values { entry.deliver(event) }
        }
    }

    func finishAll(throwing error: any Error) {
        state.withLock { state in
            for entry in state.entries.values { entry.continuation.finish(throwing: error) }
        }
    }
}

/// Resumes one continuation after `count` replies, with the first error if any.
final class CompletionGroup: Sendable {
    private struct State {
        var remaining: Int
        var error: (any Error)?
        var continuation: UnsafeContinuation<Void, any Error>?
    }

    private let state: Mutex<State>

    init(count: Int, continuation: UnsafeContinuation<Void, any Error>) {
        state = Mutex(State(remaining: count, error: nil, continuation: continuation))
    }

    func complete(_ result: Result<RedisReply, any Error>) {
        let finished = state.withLock { state -> (UnsafeContinuation<Void, any Error>, (any Error)?)? in
            if case .failure(let error) = result, state.error == nil { state.error = error }
            state.remaining -= 1
            guard state.remaining == 0, let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.error)
        }
        guard let (continuation, error) = finished else { return }
        if let error { continuation.resume(throwing: error) } else { continuation.resume() }
    }
}
