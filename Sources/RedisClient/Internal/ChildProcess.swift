import CHiredis
import Foundation
import Synchronization

/// A server process launched for tests or benchmarks: spawned with a clean signal
/// state, its output in a log file, stopped on request and at process exit.
/// Used by ``RedisServer`` and by the etcd launcher of the conformance tests.
final class ChildProcess: Sendable {
    /// Runs `body` (which launches a process, or makes descriptors no child may
    /// inherit) on the launcher thread, one at a time, and returns its result.
    ///
    /// Every launch happens on that one thread, which lives as long as the process: a
    /// child that asks for a signal when its parent dies (``spawn(_:arguments:logPath:pidFile:parentDeathSignal:)``)
    /// gets it when the thread that launched it exits, so it must not be launched from
    /// a pool thread that may end while the child should run on.
    static func launching<T>(_ body: () -> T) -> T {
        Launcher.shared.run(body)
    }

    /// The process id; 0 once the process has been reaped.
    var pid: pid_t { state.withLock { $0 } }
    private let state: Mutex<pid_t>

    private init(pid: pid_t) {
        state = Mutex(pid)
    }

    /// Starts `executable` with `arguments`, stdin from /dev/null and stdout and stderr
    /// appended to `logPath`. With `pidFile`, writes the child's pid there, so that
    /// scripts can stop a child whose parent crashed (scripts/lib.sh does).
    ///
    /// With `parentDeathSignal`, the child gets that signal when this process dies, even
    /// by SIGKILL (`setpriv --pdeathsig`, from util-linux, execs the program with
    /// `PR_SET_PDEATHSIG` set; without setpriv the child is launched without it).
    static func spawn(_ executable: String, arguments: [String], logPath: String, pidFile: String? = nil,
                      parentDeathSignal: String? = nil) throws -> ChildProcess {
        var program = [executable] + arguments
        var path = executable
        if let parentDeathSignal, let setpriv = Self.setpriv {
            program = [setpriv, "--pdeathsig", parentDeathSignal, "--"] + program
            path = setpriv
        }
        var argv: [UnsafeMutablePointer<CChar>?] = program.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&fileActions, 1, 2)
        Self.closeInheritedDescriptors(&fileActions)
        var child: pid_t = 0
        let status = Self.withSpawnAttributes { attributes in
            Self.launching { posix_spawn(&child, path, &fileActions, &attributes, &argv, environ) }
        }
        guard status == 0 else {
            throw RedisError(.serverStartFailed, "could not launch \(executable): \(String(cString: strerror(status)))")
        }
        ChildRegistry.shared.add(child)
        if let pidFile { try? "\(child)\n".write(toFile: pidFile, atomically: true, encoding: .utf8) }
        return ChildProcess(pid: child)
    }

    /// Adds to `actions` the closing of every descriptor from 3 up in the child. NIO's
    /// sockets are not close-on-exec: without this, a long-lived child (a redis-server
    /// a test starts) would keep a copy of every socket open at that moment, and a
    /// connection another thread closes would never reach its peer as closed.
    static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        // glibc 2.34+ has posix_spawn_file_actions_addclosefrom_np; Swift's Glibc
        // module does not declare it.
        if let symbol = closeFromSymbol {
            _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
            return
        }
        // Older C libraries: a close action for every descriptor the process may have
        // (glibc ignores EBADF for descriptors within the limit).
        for fd in 3..<min(Int32(getdtablesize()), 65_536) { posix_spawn_file_actions_addclose(&actions, fd) }
    }

    private nonisolated(unsafe) static let closeFromSymbol: UnsafeMutableRawPointer? = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np")

    /// Runs `body` with posix_spawn attributes for a clean child: the calling thread may
    /// block signals (Dispatch's threads do), and the child must start with an empty
    /// mask and default handlers, or SIGTERM would not stop it.
    static func withSpawnAttributes<T>(_ body: (inout posix_spawnattr_t) -> T) -> T {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        return body(&attributes)
    }

    /// Whether the process has exited (reaping it if so).
    func hasExited() -> Bool {
        state.withLock { pid in
            guard pid > 0 else { return true }
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return false }
            ChildRegistry.shared.remove(pid)
            pid = 0
            return true
        }
    }

    /// Sends `signal` to a running process without waiting (SIGSTOP, SIGCONT, ...).
    func send(_ signal: Int32) {
        let current = pid
        if current > 0 { kill(current, signal) }
    }

    /// Sends `signal` and waits for the process to exit, with SIGKILL after `grace`.
    func terminate(signal: Int32, grace: Duration = .seconds(5)) async {
        let child = state.withLock { pid -> pid_t in
            defer { pid = 0 }
            return pid
        }
        guard child > 0 else { return }
        kill(child, signal)
        let deadline = ContinuousClock.now + grace
        var exitStatus: Int32 = 0
        while waitpid(child, &exitStatus, WNOHANG) == 0 {
            if ContinuousClock.now > deadline {
                kill(child, SIGKILL)
                waitpid(child, &exitStatus, 0)
                break
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        ChildRegistry.shared.remove(child)
    }

    /// The last `lines` lines of a log file, for error messages.
    static func tail(of path: String, lines: Int = 12) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// A loopback TCP port that was free a moment ago.
    static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RedisError(.serverStartFailed, "could not open a socket to find a free port") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw RedisError(.serverStartFailed, "could not bind a loopback port: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Whether process `pid` has exited: it no longer exists, or it is a zombie (its
    /// parent gone, and a PID 1 that reaps nothing, as in some containers). A process
    /// this one may not signal counts as running.
    static func hasExited(_ pid: pid_t) -> Bool {
        if Glibc.kill(pid, 0) != 0 { return errno == ESRCH }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return stat[close...].dropFirst(2).hasPrefix("Z")
    }

    /// The first executable called `name` on `searchPath` (default `$PATH`).
    static func locate(_ name: String, searchPath: String? = nil) -> String? {
        let path = searchPath ?? ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
            return "\(directory)/\(name)"
        }
        return nil
    }

    /// Where temporary directories go: `$TMPDIR`, or /tmp when that path is too long
    /// for the unix sockets made inside them.
    static var temporaryBase: String {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        return base.utf8.count > 60 ? "/tmp" : base
    }

    /// A new directory under ``temporaryBase``.
    static func makeTemporaryDirectory(prefix: String) throws -> String {
        let base = temporaryBase
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw RedisError(.serverStartFailed, "could not create a temporary directory under \(base): \(String(cString: strerror(errno)))")
        }
        return String(cString: result)
    }
}

extension ChildProcess {
    /// util-linux's setpriv, when installed (Debian: always, util-linux is essential).
    static let setpriv: String? = ["/usr/bin/setpriv", "/bin/setpriv"].first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// The thread launches run on (see ``ChildProcess/launching(_:)``): started at first
/// use, it never exits.
private final class Launcher: @unchecked Sendable {
    static let shared = Launcher()

    /// One launch: `body` runs on the launcher thread, which drops it before `done`
    /// is signalled (the caller's closure must not outlive the call).
    private final class Job {
        var body: (() -> Void)?
        let done = DispatchSemaphore(value: 0)
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var jobs: [Job] = []

    private init() {
        let thread = Thread { [self] in
            // (Foundation's Thread.name does not reach the kernel on Linux.)
            _ = chiredis_set_thread_name("coord-launcher")
            work()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func work() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            Self.runOnce(job)
            job.done.signal()
        }
    }

    /// Runs the job's body and releases it.
    private static func runOnce(_ job: Job) {
        guard let body = job.body else { return }
        job.body = nil
        body()
    }

    /// Runs `body` on the launcher thread and waits for it.
    func run<T>(_ body: () -> T) -> T {
        var result: T?
        withoutActuallyEscaping(body) { body in
            let job = Job { result = body() }
            condition.lock()
            jobs.append(job)
            condition.signal()
            condition.unlock()
            job.done.wait()
        }
        return result!
    }
}

/// Children still running, killed when the process exits.
final class ChildRegistry: Sendable {
    static let shared: ChildRegistry = {
        atexit {
            for pid in ChildRegistry.shared.pids.withLock({ $0 }) { kill(pid, SIGKILL) }
        }
        return ChildRegistry()
    }()

    let pids = Mutex<Set<pid_t>>([])

    func add(_ pid: pid_t) { _ = pids.withLock { $0.insert(pid) } }
    func remove(_ pid: pid_t) { _ = pids.withLock { $0.remove(pid) } }
}

extension ChildProcess {
    /// What a program run to completion printed, and its exit status.
    struct Finished: Sendable {
        var status: Int32
        var output: String
        var error: String
    }

    /// Runs a program to completion on a thread of its own (never blocking the
    /// cooperative pool), with `input` on its stdin; kills it after `timeout`. For
    /// the tests' real clients (etcdctl, redis-cli, Go and Python programs).
    static func run(_ executable: String, _ arguments: [String], environment: [String: String], input: String = "",
                    timeout: Duration = .seconds(60)) async throws -> Finished {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                let process: PipedProcess
                do {
                    process = try PipedProcess(executable, arguments, environment: environment, stdin: .pipe, stdout: .pipe, stderr: .pipe)
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let killer = DispatchWorkItem { process.send(SIGKILL) }
                let (seconds, attoseconds) = timeout.components
                DispatchQueue.global().asyncAfter(deadline: .now() + Double(seconds) + Double(attoseconds) / 1e18, execute: killer)
                let errorData = Mutex(Data())
                let errorDone = DispatchSemaphore(value: 0)
                Thread.detachNewThread {
                    let data = process.standardError?.readDataToEndOfFile() ?? Data()
                    errorData.withLock { $0 = data }
                    errorDone.signal()
                }
                let inputDone = DispatchSemaphore(value: 0)
                Thread.detachNewThread {
                    // A child that exits without reading its input makes the write fail
                    // with EPIPE (SIGPIPE is blocked on this thread), not kill us.
                    blockSIGPIPEOnThisThread()
                    try? process.standardInput?.write(contentsOf: Data(input.utf8))
                    try? process.standardInput?.close()
                    inputDone.signal()
                }
                let out = process.standardOutput?.readDataToEndOfFile() ?? Data()
                errorDone.wait()
                process.waitUntilExit()
                killer.cancel()
                inputDone.wait()
                continuation.resume(returning: Finished(status: process.terminationStatus, output: String(decoding: out, as: UTF8.self),
                                                        error: String(decoding: errorData.withLock { $0 }, as: UTF8.self)))
            }
        }
    }
}
