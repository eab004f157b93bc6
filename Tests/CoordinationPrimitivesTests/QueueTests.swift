import CoordinationPrimitives
import RedisClient
import Testing

/// etcd's integration/v3_queue_test.go, and more.
@Suite(.timeLimit(.minutes(1))) struct QueueTests {
    /// etcd's TestQueueOneReaderOneWriter: items come out in the order they went in.
    @Test func queueOneReaderOneWriterIsFIFO() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 1) { clients in
                let writer = Queue(client: clients[0], prefix: "testq")
                let writing = Task {
                    for index in 0..<5 { try await writer.enqueue("\(index)") }
                }
                let reader = Queue(client: store, prefix: "testq")
                var read: [String] = []
                for _ in 0..<5 { read.append(try await reader.dequeue().valueString) }
                #expect(await completes(writing))
                try await writing.value
                #expect(read == ["0", "1", "2", "3", "4"])
            }
        }
    }

    /// etcd's TestQueueManyReaderOneWriter.
    @Test func queueManyReadersOneWriterDeliverEachItemOnce() async throws {
        try await readersWriters(readers: 3, writers: 1) { PlainQueue(queue: Queue(client: $0, prefix: "q")) }
    }

    /// etcd's TestQueueOneReaderManyWriter.
    @Test func queueOneReaderManyWritersDeliverEachItemOnce() async throws {
        try await readersWriters(readers: 1, writers: 3) { PlainQueue(queue: Queue(client: $0, prefix: "q")) }
    }

    /// etcd's TestQueueManyReaderManyWriter.
    @Test func queueManyReadersManyWritersDeliverEachItemOnce() async throws {
        try await readersWriters(readers: 3, writers: 3) { PlainQueue(queue: Queue(client: $0, prefix: "q")) }
    }

    /// etcd's TestPrQueueManyReaderManyWriter: random priorities 0 and 1.
    @Test func priorityQueueManyReadersManyWritersDeliverEachItemOnce() async throws {
        try await readersWriters(readers: 3, writers: 3) { client in
            let queue = PriorityQueue(client: client, prefix: "prq")
            return FlatPriorityQueue(queue: queue)
        }
    }

    @Test func queueDequeueBlocksUntilAnItemIsEnqueued() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 1) { clients in
                let reader = Queue(client: store, prefix: "q")
                let reading = Task { try await reader.dequeue().valueString }
                #expect(await stillBlocked(reading))
                try await Queue(client: clients[0], prefix: "q").enqueue("wake")
                #expect(await completes(reading))
                #expect(try await reading.value == "wake")
                #expect(try await recipeKeys(under: "q/", in: store).isEmpty)
            }
        }
    }

    @Test func queueCancelledDequeueRemovesNothing() async throws {
        try await withStore { store, _ in
            let queue = Queue(client: store, prefix: "q")
            let reading = Task { try await queue.dequeue() }
            #expect(await stillBlocked(reading))
            reading.cancel()
            #expect(await completes(reading))
            await #expect(throws: CancellationError.self) { try await reading.value }
            try await queue.enqueue("kept")
            #expect(try await recipeKeys(under: "q/", in: store).count == 1)
            #expect(try await queue.dequeue().valueString == "kept")
        }
    }

    @Test func queueKeysAreUniqueNanosecondStamps() async throws {
        try await withStore { store, _ in
            let queue = Queue(client: store, prefix: "q")
            for _ in 0..<3 { try await queue.enqueue("x") }
            let kvs = try await store.get("q/", options: .prefix(Array("q/".utf8))).kvs
            #expect(kvs.count == 3)
            #expect(kvs.allSatisfy { $0.keyString.hasPrefix("q/") && Int64($0.keyString.dropFirst(2)) != nil && $0.lease == 0 })
        }
    }

    /// etcd's TestPrQueueOneReaderOneWriter: random priorities 0...2 come out in order.
    @Test func priorityQueueDequeuesLowestPriorityFirst() async throws {
        try await withStore { store, _ in
            let queue = PriorityQueue(client: store, prefix: "testprq")
            for _ in 0..<5 {
                let priority = UInt16.random(in: 0...2)
                try await queue.enqueue("\(priority)", priority: priority)
            }
            var last = -1
            for _ in 0..<5 {
                let priority = try #require(Int(try await queue.dequeue().valueString))
                #expect(last <= priority)
                last = priority
            }
        }
    }

    @Test func priorityQueueIsFIFOWithinAPriority() async throws {
        try await withStore { store, _ in
            let queue = PriorityQueue(client: store, prefix: "prq")
            let items: [(String, UInt16)] = [("b1", 2), ("a1", 0), ("c1", 65535), ("b2", 2), ("a2", 0), ("b3", 2), ("a3", 0)]
            for (value, priority) in items { try await queue.enqueue(value, priority: priority) }
            var read: [String] = []
            for _ in items { read.append(try await queue.dequeue().valueString) }
            #expect(read == ["a1", "a2", "a3", "b1", "b2", "b3", "c1"])
        }
    }

    @Test func priorityQueueDequeueBlocksUntilAnItemIsEnqueued() async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: 1) { clients in
                let reader = PriorityQueue(client: store, prefix: "prq")
                let reading = Task { try await reader.dequeue().valueString }
                #expect(await stillBlocked(reading))
                try await PriorityQueue(client: clients[0], prefix: "prq").enqueue("wake", priority: 7)
                #expect(await completes(reading))
                #expect(try await reading.value == "wake")
            }
        }
    }

    @Test func priorityQueueKeysFollowEtcdLayout() async throws {
        try await withStore { store, _ in
            let queue = PriorityQueue(client: store, prefix: "prq")
            try await queue.enqueue("x", priority: 3)
            try await queue.enqueue("y", priority: 3)
            try await queue.enqueue("z", priority: 12)
            #expect(try await recipeKeys(under: "prq/", in: store)
                == ["prq/00003/0000000000000000", "prq/00003/0000000000000001", "prq/00012/0000000000000000"])
            // Numbering goes on from the newest key of the priority (etcd's last key + 1).
            #expect(try await queue.dequeue().valueString == "x")
            try await queue.enqueue("w", priority: 3)
            #expect(try await recipeKeys(under: "prq/00003/", in: store) == ["prq/00003/0000000000000001", "prq/00003/0000000000000002"])
        }
    }

    // MARK: etcd's testReadersWriters

    /// `writers` clients enqueue two distinct items each while `readers` clients dequeue
    /// them all: every item comes out exactly once.
    private func readersWriters<Q: TestQueue>(readers: Int, writers: Int, makeQueue: @escaping @Sendable (CoordinationClient) -> Q) async throws {
        try await withStore { store, server in
            try await withClients(store, server, count: readers + writers) { clients in
                let itemsPerWriter = 2
                let total = writers * itemsPerWriter
                let claimed = RecipeBox(0)
                let read = RecipeBox<[String]>([])
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<writers {
                        let queue = makeQueue(clients[readers + writer])
                        group.addTask {
                            for item in 0..<itemsPerWriter { try await queue.enqueue("w\(writer)-\(item)") }
                        }
                    }
                    for reader in 0..<readers {
                        let queue = makeQueue(clients[reader])
                        group.addTask {
                            while claimed.update({ count -> Bool in
                                count += 1
                                return count <= total
                            }) {
                                let value = try await queue.dequeue()
                                read.update { $0.append(value) }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let expected = (0..<writers).flatMap { writer in (0..<itemsPerWriter).map { "w\(writer)-\($0)" } }
                #expect(read.value.sorted() == expected.sorted())
            }
        }
    }
}

/// etcd's testQueue interface.
protocol TestQueue: Sendable {
    func enqueue(_ value: String) async throws
    func dequeue() async throws -> String
}

/// A plain queue seen through etcd's testQueue interface.
struct PlainQueue: TestQueue {
    let queue: Queue
    func enqueue(_ value: String) async throws { try await queue.enqueue(value) }
    func dequeue() async throws -> String { try await queue.dequeue().valueString }
}

/// etcd's flatPriorityQueue: random priorities to stress dequeueing; order does not matter.
struct FlatPriorityQueue: TestQueue {
    let queue: PriorityQueue
    func enqueue(_ value: String) async throws { try await queue.enqueue(value, priority: UInt16.random(in: 0...1)) }
    func dequeue() async throws -> String { try await queue.dequeue().valueString }
}
