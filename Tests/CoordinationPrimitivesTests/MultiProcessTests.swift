import CoordinationPrimitives
import Foundation
@testable import RedisClient
import Testing

/// A running child process built by this package: the PrimitivesWorker
/// (Tests/PrimitivesWorker) by default, or coordctl.
final class Worker: @unchecked Sendable {
    let process: PipedProcess
    private var buffered = Data()

    init(_ arguments: [String], executable name: String = "PrimitivesWorker", environment: [String: String] = [:]) throws {
        let candidates = [
            Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent(name),
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent(".build/debug/\(name)"),
        ]
        guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw RedisError(.serverNotFound, "\(name) is not built; run swift build --build-tests first")
        }
        process = try PipedProcess(executable.path, arguments,
                                   environment: environment.isEmpty ? nil : ProcessInfo.processInfo.environment.merging(environment) { _, new in new },
                                   stdin: .pipe, stdout: .pipe, stderr: .inherit)
    }

    var pid: pid_t { process.processIdentifier }

    /// Whether the worker has not exited yet.
    var isRunning: Bool { process.isRunning }

    /// The next line the worker prints (blocking a thread of its own).
    func readLine() async -> String? {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                while true {
                    if let newline = self.buffered.firstIndex(of: UInt8(ascii: "\n")) {
                        let line = String(decoding: self.buffered[..<newline], as: UTF8.self)
                        self.buffered.removeSubrange(...newline)
                        continuation.resume(returning: line)
                        return
                    }
                    let chunk = self.process.standardOutput?.availableData ?? Data()
                    if chunk.isEmpty {
                        continuation.resume(returning: nil)
                        return
                    }
                    self.buffered.append(chunk)
                }
            }
        }
    }

    func send(_ line: String) {
        try? process.standardInput?.write(contentsOf: Data((line + "\n").utf8))
    }

    func signal(_ signal: Int32) { kill(pid, signal) }

    func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                self.process.waitUntilExit()
                continuation.resume(returning: self.process.terminationStatus)
            }
        }
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL) }
    }
}

@Suite(.serialized) struct MultiProcessTests {
    @Test func eightProcessesContendingTwoThousandTimesNeverOverlapAndFenceInOrder() async throws {
        try await withStore { store, server in
            let processes = 8, perProcess = 250
            let workers = try (0..<processes).map { _ in try Worker(["contend", server.url, "contended", String(perProcess), "10"]) }
            var summaries: [String] = []
            for worker in workers {
                summaries.append(await worker.readLine() ?? "")
                #expect(await worker.wait() == 0)
            }
            var tokens: [Int64] = []
            for summary in summaries {
                let fields = summary.split(separator: " ")
                try #require(fields.count == 8, "unexpected worker output: \(summary)")
                #expect(fields[1] == "\(perProcess)")
                #expect(fields[3] == "0", "holders overlapped: \(summary.prefix(60))")
                #expect(fields[5] == "0", "fenced writes rejected: \(summary.prefix(60))")
                tokens += fields[7].split(separator: ",").map { Int64($0)! }
            }
            #expect(tokens.count == processes * perProcess)
            #expect(Set(tokens).count == tokens.count, "two holders had the same fencing token")
            // The fence accepted every write, so tokens rose strictly in the order of the
            // holds; each process's own tokens rise too.
            for summary in summaries {
                let own = summary.split(separator: " ")[7].split(separator: ",").map { Int64($0)! }
                #expect(own == own.sorted())
            }
        }
    }

    @Test func aHolderKilledWithSIGKILLFreesTheLockWhenItsTTLRunsOut() async throws {
        try await withStore { store, server in
            // 5 s: the holder keeps its lock while the waiter queues, through a loaded
            // machine's delays between its refreshes (with 2 s, one late refresh frees it).
            let ttl: Int64 = 5
            let holder = try Worker(["hold", server.url, "killed", String(ttl)])
            let locked = await holder.readLine()
            #expect(locked?.hasPrefix("locked ") == true)
            let waiter = DistributedMutex(session: try await Session(client: store, ttl: 60), prefix: "killed")
            let waiting = Task { try await waiter.lock() }
            #expect(await eventually(timeout: .seconds(20)) { (try? await store.get("killed/", options: .prefix(Array("killed/".utf8))).count) == 2 })
            holder.signal(SIGKILL)
            _ = await holder.wait()
            // Nobody unlocks: only the expiry of the holder's lease lets the waiter in.
            let token = try await within { try await waiting.value }
            #expect(token > Int64(locked?.split(separator: " ").last ?? "0")!)
        }
    }

    @Test func aHolderStoppedPastItsTTLHasItsLaterWriteRejectedByTheFence() async throws {
        try await withStore { store, server in
            let ttl: Int64 = 2
            let holder = try Worker(["hold", server.url, "stopped", String(ttl)])
            let locked = try #require(await holder.readLine())
            let staleToken = Int64(locked.split(separator: " ").last!)!
            holder.signal(SIGSTOP)
            // The stopped holder cannot refresh: its lease expires and the next waiter gets the lock.
            let next = DistributedMutex(session: try await Session(client: store, ttl: 10), prefix: "stopped")
            let token = try await next.lock()
            #expect(token > staleToken)
            let writer = try Worker(["fence", server.url, "stopped", String(token)])
            #expect(await writer.readLine() == "write accepted")
            holder.signal(SIGCONT)
            holder.send("write")
            #expect(await holder.readLine() == "write rejected")
            #expect(await holder.wait() == 0)
        }
    }
}
