import EventLoopExecution
import GRPCCore
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2

/// Serves the fast path's unary calls (KV: Range, Put, DeleteRange, Txn, Compact;
/// Lease: LeaseGrant, LeaseRevoke, LeaseTimeToLive, LeaseLeases; Lock: Lock, Unlock;
/// Election: Campaign, Proclaim, Leader, Resign) on the connection's
/// own frames, with no stream channel: the handler between swift-nio-http2's
/// connection handler and its stream multiplexer in ``EtcdHTTP2Transport``.
///
/// A stream channel per call (its allocation, pipeline, activation, the multiplexer's
/// bookkeeping, and each frame passed through it and back) cost about a tenth of
/// coordproxy's CPU per call (put 68 → 61 µs, get 72 → 62 µs without it, in the load
/// test's workloads), for requests that are a HEADERS frame and a DATA frame in and
/// three frames out. So a new stream whose first HEADERS name one of these
/// methods, as a plain gRPC request (POST, a gRPC content type, no compression), is
/// kept here: its request message is collected from its DATA frames (with the
/// stream's flow-control window reopened as the bytes arrive), the method runs in a
/// task on the connection's event loop, and the response headers, message and
/// trailers are written as frames of the stream. Every other stream, and every frame
/// of the connection itself, goes on to the multiplexer, whose stream channels begin
/// with a ``GRPCFastPath`` (the Watch stream, grpc-swift's calls, and the refusals of
/// requests that are not plain gRPC).
///
/// The answers are the fast path's: the same messages and status codes, RESOURCE_EXHAUSTED
/// past the request size limit, INTERNAL for a message that does not decode, the
/// client's `grpc-timeout` kept, and the same metrics and logs.
final class GRPCUnaryCalls: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias InboundOut = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// One call served here, from its request headers until its stream closes.
    private final class Call {
        enum State {
            /// Collecting the request message.
            case collecting
            /// The method runs; frames that still arrive are dropped.
            case running
            /// Answered (or reset).
            case done
        }

        let method: GRPCFastPath.Method
        var state = State.collecting
        var body: ByteBuffer?
        var task: Task<Void, Never>?
        /// The client's `grpc-timeout`, and the timer that ends the call when it passes.
        let timeout: TimeAmount?
        var deadline: Scheduled<Void>?
        var timedOut = false
        /// Request bytes received since the stream's window was last reopened.
        var unacknowledged = 0

        init(method: GRPCFastPath.Method, timeout: TimeAmount?) {
            self.method = method
            self.timeout = timeout
        }
    }

    private let methods: GRPCFastPath.Table
    /// The connection's event loop as a task executor: the calls run there.
    private let executor: EventLoopTaskExecutor
    private let maxRequestSize: Int
    private let logger: Logger
    private let streams: StreamCount
    /// The stream window the connection advertises; a call's is reopened when half of it is used.
    private let windowSize: Int
    private var calls: [HTTP2StreamID: Call] = [:]
    /// The highest stream the client has opened: a HEADERS frame above it opens a new
    /// stream (HTTP/2 stream IDs only grow), any other is a stream's trailers.
    private var lastStreamID = HTTP2StreamID.rootStream

    init(methods: GRPCFastPath.Table, executor: EventLoopTaskExecutor, maxRequestSize: Int, windowSize: Int, streams: StreamCount, logger: Logger) {
        self.methods = methods
        self.executor = executor
        self.maxRequestSize = maxRequestSize
        self.windowSize = windowSize
        self.streams = streams
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let id = frame.streamID
        if let call = calls[id] {
            read(context: context, id: id, call: call, payload: frame.payload)
            return
        }
        if case .headers(let headers) = frame.payload, id > lastStreamID {
            lastStreamID = id
            if let method = plainCall(headers.headers) {
                let call = Call(method: method, timeout: headers.headers.first(name: "grpc-timeout").flatMap(GRPCFastPath.timeout(parsing:)))
                calls[id] = call
                if headers.endStream { finishRequest(context: context, id: id, call: call) }
                return
            }
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is NIOHTTP2StreamCreatedEvent:
            streams.streamOpened()
        case let closed as StreamClosedEvent:
            streams.streamClosed()
            if let call = calls.removeValue(forKey: closed.streamID) {
                call.state = .done
                call.body = nil
                call.task?.cancel()
                call.task = nil
                call.deadline?.cancel()
                call.deadline = nil
            }
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        for call in calls.values {
            call.state = .done
            call.task?.cancel()
            call.deadline?.cancel()
        }
        calls = [:]
        context.fireChannelInactive()
    }

    /// The method of a plain gRPC request for one of the calls served here; nil for
    /// every other stream (the multiplexer's: other methods, and requests that
    /// ``GRPCFastPath`` refuses).
    private func plainCall(_ headers: HPACKHeaders) -> GRPCFastPath.Method? {
        guard let path = headers.first(name: ":path"), let method = methods[path],
              headers.first(name: ":method") == "POST",
              let contentType = headers.first(name: "content-type"), contentType.hasPrefix("application/grpc")
        else { return nil }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" { return nil }
        return method
    }

    /// A frame of a call's stream while its request arrives; a reset at any time.
    private func read(context: ChannelHandlerContext, id: HTTP2StreamID, call: Call, payload: HTTP2Frame.FramePayload) {
        if case .rstStream = payload {
            call.state = .done
            call.body = nil
            call.task?.cancel()
            return
        }
        guard case .collecting = call.state else { return }
        switch payload {
        case .data(let frame):
            let received = frame.data.readableBytes + (frame.paddingBytes.map { $0 + 1 } ?? 0)
            GRPCFastPath.append(frame.data, to: &call.body)
            // The message's length is known from its first 5 bytes: past the limit, the
            // call is refused before the rest arrives (or past one message of the limit,
            // whatever the length said: nothing is buffered beyond it).
            if let body = call.body, body.readableBytes >= 5, let length = body.getInteger(at: body.readerIndex + 1, as: UInt32.self),
               Int(length) > maxRequestSize || body.readableBytes > maxRequestSize + 5 {
                call.body = nil
                fail(context: context, id: id, call: call, status: .resourceExhausted,
                     message: "Message has exceeded the configured maximum payload size (max: \(maxRequestSize), actual: \(max(Int(length), body.readableBytes - 5)))",
                     reset: true)
                return
            }
            if frame.endStream {
                finishRequest(context: context, id: id, call: call)
            } else {
                // The stream channel this replaces reopened the window as its reader
                // took the bytes; here they are taken as they arrive.
                call.unacknowledged += received
                if call.unacknowledged >= windowSize / 2 {
                    let increment = call.unacknowledged
                    call.unacknowledged = 0
                    context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: increment))), promise: nil)
                }
            }
        case .headers(let trailers):
            if trailers.endStream { finishRequest(context: context, id: id, call: call) }
        default:
            break
        }
    }

    /// The request is complete: its one message is handed to the method, in a task on
    /// the connection's event loop, whose end writes the answer.
    private func finishRequest(context: ChannelHandlerContext, id: HTTP2StreamID, call: Call) {
        call.state = .running
        let method = call.method
        var request = call.body ?? context.channel.allocator.buffer(capacity: 0)
        call.body = nil
        let empty = request.readableBytes == 0
        // Exactly one uncompressed message: a flag byte, a 4-byte length, the bytes.
        guard request.readableBytes >= 5,
              let compressed = request.readInteger(as: UInt8.self),
              let length = request.readInteger(as: UInt32.self),
              compressed == 0, Int(length) == request.readableBytes
        else {
            fail(context: context, id: id, call: call, status: .internalError,
                 message: empty ? "Unary RPC requires exactly one request message" : "Invalid gRPC message framing in the request",
                 reset: false)
            return
        }
        let message = Array(request.readableBytesView)
        let recorder = APIMetrics.start(service: method.service, method: method.name)
        let bound = NIOLoopBound((self, context, call), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let logger = self.logger
        // On the connection's event loop: the store's reply resumes the call there,
        // where its response is written (no hop through Swift's global pool and back).
        call.task = Task(executorPreference: executor) {
            let result: Result<[UInt8], RPCError>
            do {
                result = .success(try await method.call(message))
            } catch {
                result = .failure(GRPCFastPath.status(of: error, method: method.name, logger: logger))
            }
            let finish: @Sendable () -> Void = {
                let (handler, context, call) = bound.value
                call.task = nil
                call.deadline?.cancel()
                call.deadline = nil
                // Answered (and counted) when the deadline passed.
                guard !call.timedOut else { return }
                // Counted however it ended, a call whose client went away included
                // (its cancellation's code), as the stream channels counted them.
                switch result {
                case .success: recorder.finish(nil)
                case .failure(let error): recorder.finish(error.code)
                }
                // Gone: the stream was reset or the connection closed.
                guard let current = handler.calls[id], current === call else { return }
                switch result {
                case .success(let bytes):
                    handler.respond(context: context, id: id, call: call, message: bytes)
                case .failure(let error):
                    handler.writeStatus(context: context, id: id, call: call, status: error.code, message: error.message, reset: false)
                }
            }
            if eventLoop.inEventLoop { finish() } else { eventLoop.execute(finish) }
        }
        if let timeout = call.timeout {
            // As etcd's grpc-go server: the call's context ends at the client's deadline,
            // the call is cancelled (a waiting Lock leaves the queue) and the client gets
            // DEADLINE_EXCEEDED, whether or not it cancels the call itself.
            call.deadline = eventLoop.scheduleTask(in: timeout) {
                let (handler, context, call) = bound.value
                call.deadline = nil
                guard case .running = call.state, handler.calls[id] === call else { return }
                call.timedOut = true
                call.task?.cancel()
                call.task = nil
                recorder.finish(method.deadlineCode)
                handler.writeStatus(context: context, id: id, call: call, status: method.deadlineCode, message: "context deadline exceeded", reset: false)
            }
        }
    }

    /// A failure answered before the call ran: counted and answered as grpc-swift would.
    private func fail(context: ChannelHandlerContext, id: HTTP2StreamID, call: Call, status: RPCError.Code, message: String, reset: Bool) {
        let recorder = APIMetrics.start(service: call.method.service, method: call.method.name)
        recorder.finish(status)
        logger.notice("refused request", metadata: ["method": "\(call.method.name)", "code": "\(status)", "message": "\(message)"])
        writeStatus(context: context, id: id, call: call, status: status, message: message, reset: reset)
    }

    /// The response headers, message and trailers (OK).
    private func respond(context: ChannelHandlerContext, id: HTTP2StreamID, call: Call, message: [UInt8]) {
        call.state = .done
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: GRPCFastPath.responseHeaders)))), promise: nil)
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(GRPCFastPath.framed(message, allocator: context.channel.allocator)))))),
                      promise: nil)
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: GRPCFastPath.trailers(status: nil, message: "", headersSent: true), endStream: true)))),
                              promise: nil)
    }

    /// A trailers-only response with the status; `reset` then resets the stream with
    /// NO_ERROR, so that a client still sending stops (RFC 9113 §8.1: a response
    /// complete before its request; grpc-go's server, etcd's, resets so too).
    private func writeStatus(context: ChannelHandlerContext, id: HTTP2StreamID, call: Call, status: RPCError.Code?, message: String, reset: Bool) {
        call.state = .done
        let trailers = GRPCFastPath.trailers(status: status, message: message, headersSent: false)
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: trailers, endStream: true)))), promise: nil)
        if reset {
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.noError))), promise: nil)
        }
        context.flush()
    }
}
