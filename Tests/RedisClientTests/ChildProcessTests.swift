import Foundation
import Testing
@testable import RedisClient

/// Children start with only stdin, stdout and stderr: NIO's sockets are not
/// close-on-exec, and a child that inherited one would keep a connection open after
/// the process closed it (its peer would never see the close).
@Suite struct ChildProcessTests {
    /// A socket that is not close-on-exec, as NIO's are, for the duration of `body`.
    private func withInheritableSocket<T>(_ body: (Int32) async throws -> T) async throws -> T {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        try #require(fcntl(fd, F_GETFD) & FD_CLOEXEC == 0)
        return try await body(fd)
    }

    @Test func aRunChildInheritsOnlyItsStandardStreams() async throws {
        try await withInheritableSocket { _ in
            // ls's own directory handle is 3; an inherited socket would be listed too.
            let result = try await ChildProcess.run("/bin/sh", ["-c", "exec ls /proc/self/fd"], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(60))
            #expect(result.status == 0, "\(result.error)")
            #expect(Set(result.output.split(separator: "\n")) == ["0", "1", "2", "3"], "\(result.output)")
        }
    }

    @Test func aSpawnedServerInheritsOnlyItsStandardStreams() async throws {
        try await withInheritableSocket { socketFD in
            let log = FileManager.default.temporaryDirectory.appendingPathComponent("child-fds-\(UUID().uuidString).log").path
            defer { try? FileManager.default.removeItem(atPath: log) }
            let parentSocket = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(socketFD)")
            let child = try ChildProcess.spawn("/bin/sleep", arguments: ["30"], logPath: log)
            // Right after exec the child's dynamic loader briefly holds the files it
            // maps (as descriptor 3); wait until the child has settled, for at most 10 s.
            // An inherited socket never goes away, so it fails the test.
            var open: [String] = []
            var links: [String] = []
            let deadline = ContinuousClock.now + .seconds(10)
            repeat {
                open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd")) ?? []
                links = open.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child.pid)/fd/\($0)") }
                if Set(open) == ["0", "1", "2"] { break }
                try await Task.sleep(for: .milliseconds(20))
            } while ContinuousClock.now < deadline
            await child.terminate(signal: SIGTERM)
            #expect(!links.contains(parentSocket), "the child holds the parent's socket \(parentSocket): \(links)")
            #expect(Set(open) == ["0", "1", "2"], "the child holds \(open.sorted()) (\(links)), the parent's socket is \(socketFD)")
        }
    }
}
