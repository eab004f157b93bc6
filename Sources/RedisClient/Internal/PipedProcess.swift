import Foundation
import Synchronization

/// A child process launched with posix_spawn, its standard streams connected to
/// pipes, files or /dev/null: what the tests and tools use instead of Foundation's
/// `Process`, whose `run()` on Linux can crash the whole process with a buffer
/// over-read while it lists /proc/self/fd (swift-corelibs-foundation#5472, in Swift
/// 6.3.1; the more descriptors are open, the likelier).
///
/// The child starts with an empty signal mask and default handlers, and inherits no
/// descriptor but its three standard streams (the pipes are close-on-exec).
final class PipedProcess: Sendable {
    /// Where a standard stream goes.
    enum Stream: Sendable {
        /// /dev/null.
        case null
        /// A pipe; this side's end is in ``standardInput`` / ``standardOutput`` / ``standardError``.
        case pipe
        /// A file, appended to (output) or read (input).
        case file(String)
        /// This process's own stream.
        case inherit
    }

    /// The process id.
    let processIdentifier: pid_t
    /// The write end of the child's stdin, when it is a pipe.
    let standardInput: FileHandle?
    /// The read end of the child's stdout, when it is a pipe.
    let standardOutput: FileHandle?
    /// The read end of the child's stderr, when it is a pipe.
    let standardError: FileHandle?
    /// The wait status once reaped.
    private let exit = Mutex<Int32?>(nil)

    /// Launches `executable` (a path) with `arguments`; `environment` nil: this
    /// process's environment.
    init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
         stdin: Stream = .null, stdout: Stream = .null, stderr: Stream = .null) throws {
        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let variables = environment ?? ProcessInfo.processInfo.environment
        var envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var parentEnds: [Int32?] = [nil, nil, nil]
        var childEnds: [Int32] = []
        defer { childEnds.forEach { Glibc.close($0) } }
        for (fd, stream) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch stream {
            case .null:
                posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
            case .file(let path):
                posix_spawn_file_actions_addopen(&actions, fd, path, fd == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND, 0o644)
            case .inherit:
                break
            case .pipe:
                var ends: [Int32] = [-1, -1]
                // Close-on-exec at once: other threads may be spawning meanwhile.
                guard Self.closeOnExecPipe(&ends) else {
                    parentEnds.compactMap { $0 }.forEach { Glibc.close($0) }
                    throw RedisError(.serverStartFailed, "could not create a pipe for \(executable): \(String(cString: strerror(errno)))")
                }
                let (child, parent) = fd == 0 ? (ends[0], ends[1]) : (ends[1], ends[0])
                childEnds.append(child)
                parentEnds[Int(fd)] = parent
                // dup2 onto 0, 1 or 2 clears close-on-exec for the child's copy.
                posix_spawn_file_actions_adddup2(&actions, child, fd)
            }
        }
        ChildProcess.closeInheritedDescriptors(&actions)
        var pid: pid_t = 0
        let status = ChildProcess.withSpawnAttributes { attributes in
            ChildProcess.launching { posix_spawn(&pid, executable, &actions, &attributes, &argv, &envp) }
        }
        guard status == 0 else {
            parentEnds.compactMap { $0 }.forEach { Glibc.close($0) }
            throw RedisError(.serverStartFailed, "could not launch \(executable): \(String(cString: strerror(status)))")
        }
        processIdentifier = pid
        standardInput = parentEnds[0].map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
        standardOutput = parentEnds[1].map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
        standardError = parentEnds[2].map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
    }

    /// A pipe whose ends are close-on-exec (pipe2 is not in Swift's Glibc module);
    /// created under the launch lock, so that no child spawned meanwhile inherits it.
    private static func closeOnExecPipe(_ ends: inout [Int32]) -> Bool {
        ChildProcess.launching {
            guard pipe(&ends) == 0 else { return false }
            for fd in ends { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return true
        }
    }

    /// Whether the child has not exited yet (reaping it if it has).
    var isRunning: Bool { reap() == nil }

    /// Waits for the child to exit (blocking the calling thread; call it off the
    /// cooperative pool) and returns ``terminationStatus``.
    @discardableResult
    func waitUntilExit() -> Int32 {
        if exit.withLock({ $0 }) == nil {
            // Blocking, outside the lock; if isRunning reaped the child meanwhile, this
            // waitpid fails with ECHILD and the status it stored stands.
            var raw: Int32 = 0
            var result: pid_t
            repeat { result = waitpid(processIdentifier, &raw, 0) } while result < 0 && errno == EINTR
            exit.withLock { status in
                if status == nil { status = result == processIdentifier ? raw : 0 }
            }
        }
        return terminationStatus
    }

    /// The exit status, or the number of the signal that ended the child (as
    /// Foundation reports it); 0 while running.
    var terminationStatus: Int32 {
        guard let status = exit.withLock({ $0 }) else { return 0 }
        if status & 0x7f == 0 { return (status >> 8) & 0xff }   // WIFEXITED: WEXITSTATUS
        return status & 0x7f                                    // WTERMSIG
    }

    /// Sends `signal` unless the child has been reaped.
    func send(_ signal: Int32) {
        exit.withLock { status in
            if status == nil { kill(processIdentifier, signal) }
        }
    }

    /// SIGTERM, as `Process.terminate()`.
    func terminate() { send(SIGTERM) }

    private func reap() -> Int32? {
        exit.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            let result = waitpid(processIdentifier, &raw, WNOHANG)
            if result == processIdentifier {
                status = raw
            } else if result < 0 && errno == ECHILD {
                status = 0   // reaped elsewhere
            }
            return status
        }
    }
}
