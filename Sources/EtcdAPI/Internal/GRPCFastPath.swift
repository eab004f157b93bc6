import EventLoopExecution
import GRPCCore
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import SwiftProtobuf
import Synchronization

/// Serves the Watch service's stream straight from the HTTP/2 stream's frames, and
/// hands every other stream to grpc-swift's server: the one handler of each stream
/// channel of ``EtcdHTTP2Transport``. (The unary calls of the KV, Lease, Lock and
/// Election services are served on the connection's frames, with no stream channel, by
/// ``GRPCUnaryCalls``, which shares this type's method table and answers.)
///
/// A call through grpc-swift's server passes each request and response through its
/// stream state machine, an async channel, an async sequence, the RPC executor's tasks
/// and an async writer: a profile of the load test's put workload put most of
/// coordproxy's CPU there, several times what the store call itself costs. These
/// calls are the hot path of every etcd client (the whole of the load test's put, get,
/// txn and STM workloads, most of its lock workloads, and every watch event), and they
/// are plain. So this handler, the whole of each HTTP/2 stream's pipeline, takes a
/// stream (``StreamMethod``) whose `:path` is one of them and whose request is
/// uncompressed gRPC: it hands each request message to the method's task as it
/// completes, and writes each response message the method sends straight to the
/// stream, flushed once per turn of the event loop, then the trailers with the status
/// the method ends with.
///
/// Every other stream (the other services, unknown methods) goes to grpc-swift's server
/// (its router, interceptors and service handlers) as an `RPCStream` over the same
/// framing: the request's metadata and messages in, the handler's messages and status
/// out (see ``Router``). Requests that are not plain gRPC are refused as grpc-swift
/// refuses them: a content type that is not gRPC with HTTP 415; a compressed request
/// with UNIMPLEMENTED, as etcd (which registers no decompressor) answers it.
///
/// Answers are the same as through grpc-swift: the same messages and status codes
/// (the service methods are shared), RESOURCE_EXHAUSTED past the request size limit,
/// and the same metrics and logs; a message that does not decode gets etcd's answer,
/// INTERNAL `grpc: error unmarshalling request: ...` (grpc-swift's is INVALID_ARGUMENT).
final class GRPCFastPath: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    /// A method served here: its names (for metrics and logs) and the call, from the
    /// request message's bytes to the response message's bytes.
    struct Method: Sendable {
        var service: String
        var name: String
        /// The status code of a call whose `grpc-timeout` passes.
        var deadlineCode = RPCError.Code.deadlineExceeded
        var call: @Sendable ([UInt8]) async throws -> [UInt8]
    }

    /// The methods by `:path` (`/etcdserverpb.KV/Put`).
    typealias Table = [String: Method]

    /// A streaming method served here: its names and the call, from the request
    /// messages' bytes (in order; finished when the client closes its side) to the
    /// response messages, given to the ``Sink``. The call returns (OK) or throws (its
    /// status) to end the stream; it is cancelled when the client resets the stream or
    /// goes away. It throws only `RPCError`s it has already logged, cancellation, or
    /// ``DecodingFailure``.
    struct StreamMethod: Sendable {
        var service: String
        var name: String
        /// Whether this handler counts the call in the API metrics (grpc-swift's
        /// interceptor counts the calls it serves through the ``Router``).
        var counted = true
        /// The status a stream whose `grpc-timeout` passes ends with; nil: the deadline
        /// is not this handler's to keep (grpc-swift's calls, see ``CallEndInterceptor``).
        var deadlineCode: RPCError.Code? = nil
        var serve: @Sendable (AsyncThrowingStream<[UInt8], any Error>, Sink) async throws -> Void
    }

    /// grpc-swift's server, for the streams not served here: the stream handler it gives
    /// its transport, and the connection's peers for the call's `ServerContext`.
    struct Router: Sendable {
        var handle: @Sendable (RPCStream<ServerRequestParts, ServerResponseParts>, ServerContext) async -> Void
        var remotePeer: String
        var localPeer: String
    }

    typealias ServerRequestParts = RPCAsyncSequence<RPCRequestPart<[UInt8]>, any Error>
    typealias ServerResponseParts = RPCWriter<RPCResponsePart<[UInt8]>>.Closable

    /// The streaming methods by `:path` (`/etcdserverpb.Watch/Watch`).
    typealias StreamTable = [String: StreamMethod]

    /// Where a streaming method sends its response messages, from any task: each is
    /// written to the stream in the order of the calls (the event loop runs them in
    /// that order), and the writes of one turn of the loop go out in one flush.
    /// Messages sent after the stream ended are dropped.
    final class Sink: Sendable {
        fileprivate let target: NIOLoopBound<(GRPCFastPath, ChannelHandlerContext)>
        fileprivate let eventLoop: any EventLoop
        /// The stream's event loop, as a task executor.
        let executor: EventLoopTaskExecutor

        fileprivate init(handler: GRPCFastPath, context: ChannelHandlerContext) {
            target = NIOLoopBound((handler, context), eventLoop: context.eventLoop)
            eventLoop = context.eventLoop
            executor = handler.executor
        }

        func send(_ message: [UInt8]) {
            let target = self.target
            eventLoop.execute {
                let (handler, context) = target.value
                handler.streamMessage(context: context, message)
            }
        }
    }

    /// Request messages decoded as `M` (one that does not decode ends the sequence with
    /// ``DecodingFailure``, INTERNAL as on etcd).
    struct Messages<M: SwiftProtobuf.Message>: AsyncSequence, Sendable {
        typealias Element = M
        let bytes: AsyncThrowingStream<[UInt8], any Error>

        struct AsyncIterator: AsyncIteratorProtocol {
            var base: AsyncThrowingStream<[UInt8], any Error>.AsyncIterator

            mutating func next() async throws -> M? {
                guard let message = try await base.next() else { return nil }
                do {
                    return try M(serializedBytes: message)
                } catch {
                    throw DecodingFailure(cause: error, onStream: true)
                }
            }
        }

        func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(base: bytes.makeAsyncIterator())
        }
    }

    /// A bridged stream's request as the transport's parts: the metadata, then each message.
    struct RequestParts: AsyncSequence, Sendable {
        typealias Element = RPCRequestPart<[UInt8]>
        let metadata: Metadata
        let messages: AsyncThrowingStream<[UInt8], any Error>

        struct AsyncIterator: AsyncIteratorProtocol {
            var metadata: Metadata?
            var base: AsyncThrowingStream<[UInt8], any Error>.AsyncIterator

            mutating func next() async throws -> RPCRequestPart<[UInt8]>? {
                if let first = metadata {
                    metadata = nil
                    return .metadata(first)
                }
                return try await base.next().map { .message($0) }
            }
        }

        func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(metadata: metadata, base: messages.makeAsyncIterator())
        }
    }

    /// A bridged stream's response: messages go to the stream as they are written, the
    /// status is kept for the end of the call (written as the trailers). Response
    /// metadata is not sent: the services set none.
    final class RouterWriter: ClosableRPCWriterProtocol {
        typealias Element = RPCResponsePart<[UInt8]>
        private let sink: Sink
        let status = Mutex<Status?>(nil)

        init(sink: Sink) {
            self.sink = sink
        }

        func write(_ element: Element) async throws {
            switch element {
            case .metadata:
                break
            case .message(let bytes):
                sink.send(bytes)
            case .status(let status, _):
                self.status.withLock { $0 = status }
            }
        }

        func write(contentsOf elements: some Sequence<Element>) async throws {
            for element in elements { try await write(element) }
        }

        func finish() async {}

        func finish(throwing error: any Error) async {}
    }

    /// A table entry for `service`'s method `name`: the request decoded (a message that
    /// does not decode is INTERNAL, as on etcd), `body` run, the
    /// response encoded. `body` throws only `RPCError`s it has already logged.
    static func method<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        service: String, _ name: String, deadlineCode: RPCError.Code = .deadlineExceeded,
        _ body: @escaping @Sendable (Request) async throws -> Response
    ) -> (String, Method) {
        ("/\(service)/\(name)", Method(service: service, name: name, deadlineCode: deadlineCode) { bytes in
            let request: Request
            do {
                request = try Request(serializedBytes: bytes)
            } catch {
                throw DecodingFailure(cause: error)
            }
            return try await body(request).serializedBytes()
        })
    }

    private enum State {
        /// Waiting for the request headers.
        case idle
        /// A stream: its method runs; request messages go to it as they complete.
        case streaming(StreamMethod)
        /// Answered (or reset).
        case done
    }

    private let streams: StreamTable
    private let router: Router
    /// The stream's event loop as a task executor: the calls run there.
    private let executor: EventLoopTaskExecutor
    private let maxRequestSize: Int
    private let logger: Logger
    private var state = State.idle
    private var body: ByteBuffer?
    private var task: Task<Void, Never>?
    /// The timer that ends a stream when its `grpc-timeout` passes.
    private var deadline: Scheduled<Void>?
    /// A stream's request messages, to its method.
    private var requests: AsyncThrowingStream<[UInt8], any Error>.Continuation?
    /// Whether a stream's response headers have been written.
    private var headersSent = false
    /// Whether a flush of a stream's messages is scheduled.
    private var flushPending = false
    /// The status of a stream this handler ended itself (refused, or reset by the client).
    private var refusedWith: RPCError.Code?
    /// Bytes of a stream's responses written but not yet sent (held by HTTP/2 flow
    /// control while the client does not read).
    private var unsentBytes = 0
    /// Past this many unsent bytes the stream is reset (as Redis's client output
    /// buffer limit for pub/sub, 32 MiB).
    static let unsentLimit = 32 * 1024 * 1024

    init(streams: StreamTable, router: Router, executor: EventLoopTaskExecutor, maxRequestSize: Int, logger: Logger) {
        self.streams = streams
        self.router = router
        self.executor = executor
        self.maxRequestSize = maxRequestSize
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .idle:
            let payload = unwrapInboundIn(data)
            guard case .headers(let headers) = payload else {
                // A stream opens with its headers (swift-nio-http2 enforces it).
                state = .done
                context.close(promise: nil)
                return
            }
            guard let path = take(headers.headers, context: context) else { return }
            let requested = headers.headers.first(name: "grpc-timeout").flatMap(Self.timeout(parsing:))
            startStream(context: context, method: streams[path] ?? bridged(path: path, headers: headers.headers), timeout: requested)
            if headers.endStream { requests?.finish() }
        case .streaming(let method):
            streamRead(context: context, method: method, payload: unwrapInboundIn(data))
        case .done:
            if case .rstStream = unwrapInboundIn(data) {
                task?.cancel()
                state = .done
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        task?.cancel()
        task = nil
        deadline?.cancel()
        deadline = nil
        requests?.finish()
        requests = nil
        state = .done
        context.fireChannelInactive()
    }

    /// The path, when the stream is a plain gRPC call; otherwise the stream is refused
    /// as grpc-swift refuses it, and nil.
    private func take(_ headers: HPACKHeaders, context: ChannelHandlerContext) -> String? {
        guard headers.first(name: ":method") == "POST",
              let contentType = headers.first(name: "content-type"), contentType.hasPrefix("application/grpc")
        else {
            state = .done
            let refusal: HPACKHeaders = [":status": "415"]
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: refusal, endStream: true))), promise: nil)
            return nil
        }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" {
            // etcd registers no decompressor: grpc-go's answer, as etcd gives it.
            writeStatus(context: context, status: .unimplemented,
                        message: "grpc: Decompressor is not installed for grpc-encoding \"\(encoding)\"",
                        headersSent: false, reset: false)
            return nil
        }
        guard let path = headers.first(name: ":path") else {
            writeStatus(context: context, status: .unimplemented, message: "No :path header has been set.", headersSent: false, reset: false)
            return nil
        }
        return path
    }

    /// A stream for grpc-swift's server: its request metadata (the headers) and
    /// messages as the transport's request parts, the router's response messages to the
    /// stream, and the status it writes as this method's end (thrown unless OK).
    private func bridged(path: String, headers: HPACKHeaders) -> StreamMethod {
        let names = path.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        let service = names.count == 3 ? String(names[1]) : ""
        let name = names.count == 3 ? String(names[2]) : String(path)
        var metadata = Metadata()
        for (header, value, _) in headers where !header.hasPrefix(":") && !Self.transportHeaders.contains(header) {
            metadata.addString(value, forKey: header)
        }
        let router = self.router
        let requestMetadata = metadata
        return StreamMethod(service: service, name: name, counted: false) { messages, sink in
            let descriptor = MethodDescriptor(fullyQualifiedService: service, method: name)
            let parts = RPCAsyncSequence(wrapping: RequestParts(metadata: requestMetadata, messages: messages))
            let writer = RouterWriter(sink: sink)
            let cancellation = ServerContext.RPCCancellationHandle()
            let context = ServerContext(descriptor: descriptor, remotePeer: router.remotePeer, localPeer: router.localPeer,
                                        cancellation: cancellation)
            await withTaskCancellationHandler {
                await router.handle(RPCStream(descriptor: descriptor, inbound: parts, outbound: RPCWriter.Closable(wrapping: writer)), context)
            } onCancel: {
                cancellation.cancel()
            }
            let status = writer.status.withLock { $0 } ?? Status(code: .internalError, message: "the call ended without a status")
            if let code = RPCError.Code(status.code) {
                throw RPCError(code: code, message: status.message)
            }
        }
    }

    /// Headers that are the transport's, not the call's metadata.
    private static let transportHeaders: Set<String> = ["content-type", "te", "grpc-encoding", "grpc-accept-encoding"]

    /// gRPC's `grpc-timeout` (up to 8 digits and a unit: H, M, S, m, u or n); nil when
    /// malformed, as grpc-go ignores it then.
    static func timeout(parsing text: String) -> TimeAmount? {
        guard let unit = text.last, text.count >= 2, text.count <= 9, let value = Int64(text.dropLast()), value >= 0 else { return nil }
        switch unit {
        case "H": return .hours(value)
        case "M": return .minutes(value)
        case "S": return .seconds(value)
        case "m": return .milliseconds(value)
        case "u": return .microseconds(value)
        case "n": return .nanoseconds(value)
        default: return nil
        }
    }

    /// The status a call that threw `error` ends with: for a request that does not
    /// decode, etcd's (grpc-go's) INTERNAL `grpc: error unmarshalling request: ...`; a
    /// service's own `RPCError` as it is; anything else mapped and logged as the
    /// services do.
    static func status(of error: any Error, method: String, logger: Logger) -> RPCError {
        switch error {
        case let failure as DecodingFailure:
            return RPCError(code: .internalError, message: failure.message)
        case let rpcError as RPCError:
            return rpcError
        default:
            return EtcdAPIServer.refuse(method, error, logger: logger)
        }
    }

    /// Starts a stream's method in a task; its end writes the status. `timeout` (the
    /// client's `grpc-timeout`) ends it only for a method with a `deadlineCode`.
    private func startStream(context: ChannelHandlerContext, method: StreamMethod, timeout: TimeAmount?) {
        state = .streaming(method)
        let (messages, requests) = AsyncThrowingStream.makeStream(of: [UInt8].self)
        self.requests = requests
        let recorder = method.counted ? APIMetrics.start(service: method.service, method: method.name) : nil
        let sink = Sink(handler: self, context: context)
        let bound = sink.target
        let eventLoop = context.eventLoop
        let logger = self.logger
        task = Task(executorPreference: executor) {
            let failure: RPCError?
            do {
                try await method.serve(messages, sink)
                failure = nil
            } catch {
                failure = GRPCFastPath.status(of: error, method: method.name, logger: logger)
            }
            eventLoop.execute {
                let (handler, context) = bound.value
                handler.task = nil
                handler.deadline?.cancel()
                handler.deadline = nil
                handler.requests?.finish()
                handler.requests = nil
                // A stream refused by this handler (an oversized message, its deadline)
                // ended with its own status, a reset one as cancelled.
                recorder?.finish(handler.refusedWith ?? failure?.code)
                guard case .streaming = handler.state else { return }
                handler.writeStatus(context: context, status: failure?.code, message: failure?.message ?? "",
                                    headersSent: handler.headersSent, reset: false)
            }
        }
        if let timeout, let code = method.deadlineCode {
            // As etcd's grpc-go server: the stream's context ends at the client's deadline,
            // and etcd's watch answers with that context's error (code Unknown).
            deadline = eventLoop.scheduleTask(in: timeout) {
                let (handler, context) = bound.value
                handler.deadline = nil
                guard case .streaming = handler.state else { return }
                handler.refusedWith = code
                handler.task?.cancel()
                handler.requests?.finish()
                handler.writeStatus(context: context, status: code, message: "context deadline exceeded", headersSent: handler.headersSent, reset: false)
            }
        }
    }

    /// Adds a DATA frame's bytes to the request bytes received so far (a stream's
    /// here, a unary call's in ``GRPCUnaryCalls``).
    static func append(_ data: IOData, to body: inout ByteBuffer?) {
        guard case .byteBuffer(var bytes) = data else { return }
        if body == nil {
            body = bytes
        } else {
            body!.writeBuffer(&bytes)
        }
    }

    /// A frame of a stream: request messages handed on as they complete, the client's
    /// end of its side, or a reset.
    private func streamRead(context: ChannelHandlerContext, method: StreamMethod, payload: HTTP2Frame.FramePayload) {
        switch payload {
        case .data(let frame):
            Self.append(frame.data, to: &body)
            while var buffer = body, buffer.readableBytes >= 5,
                  let compressed = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
                  let length = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self) {
                guard compressed == 0, Int(length) <= maxRequestSize else {
                    body = nil
                    task?.cancel()
                    requests?.finish()
                    requests = nil
                    let (status, message): (RPCError.Code, String) = compressed != 0
                        ? (.internalError, "Invalid gRPC message framing in the request")
                        : (.resourceExhausted, "Message has exceeded the configured maximum payload size (max: \(maxRequestSize), actual: \(length))")
                    refusedWith = status
                    logger.notice("refused request", metadata: ["method": "\(method.name)", "code": "\(status)", "message": "\(message)"])
                    writeStatus(context: context, status: status, message: message, headersSent: headersSent, reset: true)
                    return
                }
                guard buffer.readableBytes >= 5 + Int(length) else { break }
                buffer.moveReaderIndex(forwardBy: 5)
                let message = buffer.readBytes(length: Int(length)) ?? []
                body = buffer.readableBytes == 0 ? nil : buffer
                requests?.yield(message)
            }
            if frame.endStream { requests?.finish() }
        case .headers(let trailers):
            if trailers.endStream { requests?.finish() }
        case .rstStream:
            state = .done
            body = nil
            refusedWith = .cancelled
            task?.cancel()
            requests?.finish()
            requests = nil
        default:
            break
        }
    }

    /// A response message of a stream: written now, flushed with the others of this
    /// turn of the event loop.
    fileprivate func streamMessage(context: ChannelHandlerContext, _ message: [UInt8]) {
        guard case .streaming(let method) = state, context.channel.isActive else { return }
        let size = 5 + message.count
        unsentBytes += size
        if unsentBytes > Self.unsentLimit {
            // The client does not read: rather than buffer without bound, reset the
            // stream with INTERNAL_ERROR, which clientv3 takes as retryable (it watches
            // again from the revision after the last one it received; nothing is lost).
            logger.warning("resetting a stream whose client does not read it (over \(Self.unsentLimit / 1024 / 1024) MiB unsent)",
                           metadata: ["method": "\(method.name)"])
            state = .done
            refusedWith = .resourceExhausted
            body = nil
            task?.cancel()
            requests?.finish()
            requests = nil
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.rstStream(.internalError))).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        let me = NIOLoopBound(self, eventLoop: context.eventLoop)
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenComplete { _ in me.value.unsentBytes -= size }
        write(context: context, message: message, withHeaders: !headersSent, promise: written)
        headersSent = true
        if !flushPending {
            flushPending = true
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let (handler, context) = bound.value
                handler.flushPending = false
                context.flush()
            }
        }
    }

    /// Writes (without flushing) one response message, uncompressed and length-prefixed,
    /// after the response headers when they are still to be sent.
    private func write(context: ChannelHandlerContext, message: [UInt8], withHeaders: Bool, promise: EventLoopPromise<Void>? = nil) {
        if withHeaders {
            context.write(wrapOutboundOut(.headers(.init(headers: Self.responseHeaders))), promise: nil)
        }
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(Self.framed(message, allocator: context.channel.allocator))))), promise: promise)
    }

    /// A response's headers.
    static let responseHeaders: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]

    /// A message as gRPC frames it: uncompressed, length-prefixed.
    static func framed(_ message: [UInt8], allocator: ByteBufferAllocator) -> ByteBuffer {
        var framed = allocator.buffer(capacity: 5 + message.count)
        framed.writeInteger(UInt8(0))
        framed.writeInteger(UInt32(message.count))
        framed.writeBytes(message)
        return framed
    }

    /// The trailers with a call's status (nil: OK); before any headers, a trailers-only
    /// response, which carries the headers' fields too.
    static func trailers(status: RPCError.Code?, message: String, headersSent: Bool) -> HPACKHeaders {
        var trailers: HPACKHeaders = headersSent ? [:] : responseHeaders
        trailers.add(name: "grpc-status", value: String(status?.rawValue ?? 0))
        if status != nil, !message.isEmpty { trailers.add(name: "grpc-message", value: percentEncoded(message)) }
        return trailers
    }

    /// The trailers (or, before any headers, a trailers-only response) with the status;
    /// `reset` then ends the stream, so that a client still sending stops.
    private func writeStatus(context: ChannelHandlerContext, status: RPCError.Code?, message: String, headersSent: Bool, reset: Bool) {
        guard context.channel.isActive else { return }
        state = .done
        let trailers = Self.trailers(status: status, message: message, headersSent: headersSent)
        let written = context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))))
        if reset {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and
    /// `%`, as `%XX`.
    static func percentEncoded(_ message: String) -> String {
        var out = [UInt8]()
        out.reserveCapacity(message.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in message.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%") {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A request message that does not decode: INTERNAL, as etcd's grpc-go answers it.
    struct DecodingFailure: Error {
        var cause: any Error
        /// A stream's message (grpc-go words that failure differently from a unary call's).
        var onStream = false

        /// grpc-go's message.
        var message: String {
            onStream ? "grpc: failed to unmarshal the received message \(detail)" : "grpc: error unmarshalling request: \(detail)"
        }

        /// The reason, in Go's words where they are known (a message cut short is
        /// `unexpected EOF` there).
        var detail: String {
            switch cause as? BinaryDecodingError {
            case .truncated?: return "unexpected EOF"
            case .malformedProtobuf?: return "proto: cannot parse invalid wire-format data"
            case .invalidUTF8?: return "proto: invalid UTF-8"
            default: return "proto: \(cause)"
            }
        }
    }
}
