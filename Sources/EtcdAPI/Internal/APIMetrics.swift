import GRPCCore
import Metrics
import Synchronization

/// The metrics the etcd API reports through swift-metrics, under etcd's Prometheus
/// names where etcd has one (so that etcd's dashboards and alerts read them):
///
/// - `grpc_server_started_total`, `grpc_server_handled_total` (by `grpc_type`,
///   `grpc_service`, `grpc_method` and, for handled, `grpc_code`) and
///   `grpc_server_handling_seconds` (a histogram) for every gRPC call and every
///   gateway request (`grpc_service="gateway"`, the path as `grpc_method`);
/// - `etcd_debugging_mvcc_watch_stream_total` and `etcd_debugging_mvcc_watcher_total`
///   (gauges: open watch streams and watchers);
/// - `etcd_debugging_lease_granted_total`, `etcd_debugging_lease_revoked_total`,
///   `etcd_debugging_lease_renewed_total` and `coordproxy_lease_keepalive_streams`.
///
/// Nothing is exported unless the process bootstraps a metrics backend
/// (`MetricsSystem.bootstrap`), as coordproxy does with Prometheus.
enum APIMetrics {
    static let watchStreams = Meter(label: "etcd_debugging_mvcc_watch_stream_total")
    static let watchers = Meter(label: "etcd_debugging_mvcc_watcher_total")
    static let leasesGranted = Counter(label: "etcd_debugging_lease_granted_total")
    static let leasesRevoked = Counter(label: "etcd_debugging_lease_revoked_total")
    static let leasesRenewed = Counter(label: "etcd_debugging_lease_renewed_total")
    static let keepAliveStreams = Meter(label: "coordproxy_lease_keepalive_streams")

    /// The label of the request latency histogram, for backends that take buckets per label.
    static let handlingSecondsLabel = "grpc_server_handling_seconds"

    fileprivate struct MethodKey: Hashable {
        var service: String
        var method: String
    }

    fileprivate struct HandledKey: Hashable {
        var method: MethodKey
        var code: RPCError.Code?
    }

    fileprivate struct Instruments {
        var started: [MethodKey: Counter] = [:]
        var timers: [MethodKey: Metrics.Timer] = [:]
        var handled: [HandledKey: Counter] = [:]
    }

    /// Counters and timers by method, made once: a registry lookup per request would
    /// cost more than the counting.
    fileprivate static let instruments = Mutex(Instruments())

    /// gRPC's type of each streaming method; the rest are unary.
    private static func type(service: String, method: String) -> String {
        switch (service, method) {
        case ("etcdserverpb.Watch", "Watch"), ("etcdserverpb.Lease", "LeaseKeepAlive"): return "bidi_stream"
        case ("v3electionpb.Election", "Observe"): return "server_stream"
        default: return "unary"
        }
    }

    fileprivate static func dimensions(_ key: MethodKey) -> [(String, String)] {
        [("grpc_type", type(service: key.service, method: key.method)), ("grpc_service", key.service), ("grpc_method", key.method)]
    }

    /// Counts a call as started and returns what records its end.
    static func start(service: String, method: String) -> CallRecorder {
        let key = MethodKey(service: service, method: method)
        let (started, timer) = instruments.withLock { instruments -> (Counter, Metrics.Timer) in
            if let started = instruments.started[key], let timer = instruments.timers[key] { return (started, timer) }
            let started = Counter(label: "grpc_server_started_total", dimensions: dimensions(key))
            let timer = Metrics.Timer(label: handlingSecondsLabel, dimensions: dimensions(key))
            instruments.started[key] = started
            instruments.timers[key] = timer
            return (started, timer)
        }
        started.increment()
        return CallRecorder(key: key, timer: timer, start: ContinuousClock.now)
    }

    struct CallRecorder: Sendable {
        fileprivate let key: MethodKey
        fileprivate let timer: Metrics.Timer
        fileprivate let start: ContinuousClock.Instant

        /// Records the call's end: nil for OK, else the code it ended with.
        func finish(_ code: RPCError.Code?) {
            timer.record(duration: ContinuousClock.now - start)
            let handledKey = HandledKey(method: key, code: code)
            let counter = APIMetrics.instruments.withLock { instruments -> Counter in
                if let counter = instruments.handled[handledKey] { return counter }
                let counter = Counter(label: "grpc_server_handled_total",
                                      dimensions: APIMetrics.dimensions(key) + [("grpc_code", APIMetrics.name(of: code))])
                instruments.handled[handledKey] = counter
                return counter
            }
            counter.increment()
        }

        func finish(_ error: any Error) {
            finish(EtcdErrors.rpcError(for: error).code)
        }
    }

    /// Go's names of the gRPC codes, as etcd's metrics show them.
    static func name(of code: RPCError.Code?) -> String {
        guard let code else { return "OK" }
        switch code {
        case .cancelled: return "Canceled"
        case .unknown: return "Unknown"
        case .invalidArgument: return "InvalidArgument"
        case .deadlineExceeded: return "DeadlineExceeded"
        case .notFound: return "NotFound"
        case .alreadyExists: return "AlreadyExists"
        case .permissionDenied: return "PermissionDenied"
        case .resourceExhausted: return "ResourceExhausted"
        case .failedPrecondition: return "FailedPrecondition"
        case .aborted: return "Aborted"
        case .outOfRange: return "OutOfRange"
        case .unimplemented: return "Unimplemented"
        case .internalError: return "Internal"
        case .unavailable: return "Unavailable"
        case .dataLoss: return "DataLoss"
        case .unauthenticated: return "Unauthenticated"
        default: return "Code\(code.rawValue)"
        }
    }
}

/// Counts every gRPC call by method and code and times it to the end of its
/// response stream.
struct MetricsInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let recorder = APIMetrics.start(service: context.descriptor.service.fullyQualifiedService, method: context.descriptor.method)
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            recorder.finish(error)
            throw error
        }
        switch response.accepted {
        case .success(var contents):
            let producer = contents.producer
            contents.producer = { writer in
                do {
                    let trailers = try await producer(writer)
                    recorder.finish(nil)
                    return trailers
                } catch {
                    recorder.finish(error)
                    throw error
                }
            }
            response.accepted = .success(contents)
        case .failure(let error):
            recorder.finish(error.code)
        }
        return response
    }
}
