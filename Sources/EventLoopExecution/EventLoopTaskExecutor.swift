import NIOCore
import Synchronization

/// A task executor that runs a task's jobs on a NIO event loop.
///
/// A request that arrives on an event loop and is served by a task usually costs two
/// thread hand-offs on top of the I/O: the task starts on Swift's global pool (a pool
/// thread is woken), and its reply is written back on the event loop (the loop is
/// woken). A task started with this executor as its preference —
/// `Task(executorPreference: EventLoopTaskExecutor.for(loop)) { ... }` — runs where
/// the request arrived instead, and so does each continuation after an `await` (a
/// Redis reply resumes it on the loop, where its response is written). Default actors
/// that the task calls run there too.
///
/// Only for work that never blocks: the loop serves its connections' I/O meanwhile.
public final class EventLoopTaskExecutor: TaskExecutor {
    /// The loop the jobs run on.
    public let eventLoop: any EventLoop

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// The executor of `eventLoop` (one per loop, made on first use).
    public static func `for`(_ eventLoop: any EventLoop) -> EventLoopTaskExecutor {
        let key = ObjectIdentifier(eventLoop)
        return executors.withLock { executors in
            if let existing = executors[key] { return existing }
            let made = EventLoopTaskExecutor(eventLoop: eventLoop)
            executors[key] = made
            return made
        }
    }

    private static let executors = Mutex<[ObjectIdentifier: EventLoopTaskExecutor]>([:])

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }
}
