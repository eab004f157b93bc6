import GRPCCore

/// Ends the work of a call served by grpc-swift when the call ends, as etcd's grpc-go
/// server ends the call's context: when the client cancels it (RST_STREAM) or goes
/// away, and when the deadline it sent (`grpc-timeout`) passes. The method's task is
/// cancelled, so a waiting Lock or Campaign leaves its queue (its key removed) and an
/// Observe stops; a call past its deadline gets "context deadline exceeded",
/// DEADLINE_EXCEEDED, or Unknown from the Lock and Election services, which answer
/// with their embedded client's error as etcd's do.
///
/// grpc-swift signals a cancelled call only through the call's
/// `ServerContext.cancellation` handle, not by cancelling the handler's task, and reads
/// no `grpc-timeout`: without this, a Lock whose client gave up kept waiting, and took
/// the lock once its turn came. ``GRPCFastPath`` does the same for the calls it serves
/// itself; this covers the ones it hands to grpc-swift (and every call with
/// `--no-grpc-fast-path`). A `grpc-timeout` that does not parse is ignored, as grpc-go
/// ignores it.
struct CallEndInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let deadline = request.metadata[stringValues: "grpc-timeout"].first(where: { _ in true })
            .flatMap(GRPCFastPath.timeout(parsing:))
            .map { ContinuousClock.now + .nanoseconds($0.nanoseconds) }
        let service = context.descriptor.service.fullyQualifiedService
        let code: RPCError.Code = Self.servicesAnsweringUnknown.contains(service) ? .unknown : .deadlineExceeded
        let cancellation = context.cancellation
        // A unary method runs within `next`, a streaming one in its response's producer.
        // (`within` waits for its tasks: `next` does not outlive this call.)
        var response = try await withoutActuallyEscaping(next) { next in
            try await Self.within(cancellation, deadline, code) { try await next(request, context) }
        }
        if case .success(var contents) = response.accepted {
            let producer = contents.producer
            contents.producer = { writer in try await Self.within(cancellation, deadline, code) { try await producer(writer) } }
            response.accepted = .success(contents)
        }
        return response
    }

    /// The services whose calls past their deadline end with Unknown on etcd (they
    /// answer with the context's error as it is).
    static let servicesAnsweringUnknown: Set<String> = ["v3lockpb.Lock", "v3electionpb.Election", "etcdserverpb.Watch"]

    private enum Outcome<Result: Sendable>: Sendable {
        case finished(Result)
        case cancelled
        case deadlinePassed
    }

    /// `body`'s result; or, when the call is cancelled or `deadline` passes first,
    /// `body` cancelled (and waited for) and the call's end thrown.
    static func within<Result: Sendable>(_ cancellation: ServerContext.RPCCancellationHandle, _ deadline: ContinuousClock.Instant?,
                                         _ code: RPCError.Code, _ body: @escaping @Sendable () async throws -> Result) async throws -> Result {
        try await withThrowingTaskGroup(of: Outcome<Result>.self) { group in
            group.addTask { .finished(try await body()) }
            group.addTask {
                try await cancellation.cancelled
                return .cancelled
            }
            if let deadline {
                group.addTask {
                    try await Task.sleep(until: deadline, clock: .continuous)
                    return .deadlinePassed
                }
            }
            defer { group.cancelAll() }
            switch try await group.next() {
            case .finished(let result): return result
            case .deadlinePassed: throw RPCError(code: code, message: "context deadline exceeded")
            case .cancelled, nil:
                // grpc-swift cancels the call itself at the deadline, timed from the
                // stream's start, a moment before this one's: that is the deadline too.
                if let deadline, ContinuousClock.now + .milliseconds(100) >= deadline {
                    throw RPCError(code: code, message: "context deadline exceeded")
                }
                throw RPCError(code: .cancelled, message: "context canceled")
            }
        }
    }
}
