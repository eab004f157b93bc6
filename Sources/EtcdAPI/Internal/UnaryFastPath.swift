import GRPCCore
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import SwiftProtobuf

/// Serves the unary calls of the KV service (Range, Put, DeleteRange, Txn, Compact)
/// and the Lease service (LeaseGrant, LeaseRevoke, LeaseTimeToLive, LeaseLeases)
/// straight from the HTTP/2 stream's frames, before grpc-swift's own stream handler.
///
/// A unary call through grpc-swift's server passes each request and response through
/// its stream state machine, an async channel, an async sequence, the RPC executor's
/// tasks and an async writer: a profile of the load test's put workload put most of
/// coordproxy's CPU there, several times what the store call itself costs. These
/// calls are the hot path of every etcd client (the whole of the load test's put, get,
/// txn and STM workloads, and most of its lock workloads), and they are plain: one request message, one response
/// message or an error, no blocking. So this handler, added first to each HTTP/2
/// stream's pipeline, takes a stream whose `:path` is one of them and whose request is
/// uncompressed gRPC, collects the request message, runs the service's method in a
/// task and writes the response headers, message and trailers itself. Every other
/// stream (other services, streaming calls, compressed requests, anything unusual)
/// passes through untouched to grpc-swift.
///
/// Answers are the same as through grpc-swift: the same messages and status codes
/// (the service methods are shared), RESOURCE_EXHAUSTED past the request size limit,
/// INVALID_ARGUMENT for a message that does not decode, and the same metrics and logs.
final class UnaryFastPath: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    /// A method served here: its names (for metrics and logs) and the call, from the
    /// request message's bytes to the response message's bytes.
    struct Method: Sendable {
        var service: String
        var name: String
        var call: @Sendable ([UInt8]) async throws -> [UInt8]
    }

    /// The methods by `:path` (`/etcdserverpb.KV/Put`).
    typealias Table = [String: Method]

    /// A table entry for `service`'s method `name`: the request decoded (a message that
    /// does not decode is INVALID_ARGUMENT, as through grpc-swift), `body` run, the
    /// response encoded. `body` throws only `RPCError`s it has already logged.
    static func method<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        service: String, _ name: String, _ body: @escaping @Sendable (Request) async throws -> Response
    ) -> (String, Method) {
        ("/\(service)/\(name)", Method(service: service, name: name) { bytes in
            let request: Request
            do {
                request = try Request(serializedBytes: bytes)
            } catch {
                throw DecodingFailure(type: "\(Request.self)")
            }
            return try await body(request).serializedBytes()
        })
    }

    private enum State {
        /// Waiting for the request headers.
        case idle
        /// Not ours: every frame goes on to grpc-swift.
        case passing
        /// Ours: collecting the request message.
        case collecting(Method)
        /// Ours: the call runs; frames that still arrive are dropped.
        case running
        /// Answered (or reset).
        case done
    }

    private let methods: Table
    private let maxRequestSize: Int
    private let logger: Logger
    private var state = State.idle
    private var body: ByteBuffer?
    private var task: Task<Void, Never>?

    init(methods: Table, maxRequestSize: Int, logger: Logger) {
        self.methods = methods
        self.maxRequestSize = maxRequestSize
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .passing:
            context.fireChannelRead(data)
        case .idle:
            let payload = unwrapInboundIn(data)
            guard case .headers(let headers) = payload, let method = take(headers.headers) else {
                state = .passing
                context.fireChannelRead(data)
                return
            }
            state = .collecting(method)
            if headers.endStream { finishRequest(context: context, method: method) }
        case .collecting(let method):
            switch unwrapInboundIn(data) {
            case .data(let frame):
                if case .byteBuffer(var bytes) = frame.data {
                    if body == nil {
                        body = bytes
                    } else {
                        body!.writeBuffer(&bytes)
                    }
                }
                // The message's length is known from its first 5 bytes: past the
                // limit, the call is refused before the rest arrives.
                if let body, body.readableBytes >= 5, let length = body.getInteger(at: body.readerIndex + 1, as: UInt32.self),
                   Int(length) > maxRequestSize || body.readableBytes > maxRequestSize + 5 {
                    // (Or more bytes than one message of the limit: whatever the length
                    // said, nothing is buffered past it.)
                    state = .done
                    self.body = nil
                    fail(context: context, method: method, status: .resourceExhausted,
                         message: "Message has exceeded the configured maximum payload size (max: \(maxRequestSize), actual: \(max(Int(length), body.readableBytes - 5)))",
                         reset: true)
                    return
                }
                if frame.endStream { finishRequest(context: context, method: method) }
            case .headers(let trailers):
                if trailers.endStream { finishRequest(context: context, method: method) }
            case .rstStream:
                state = .done
                body = nil
            default:
                break
            }
        case .running, .done:
            if case .rstStream = unwrapInboundIn(data) {
                task?.cancel()
                state = .done
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        task?.cancel()
        task = nil
        if case .passing = state {} else { state = .done }
        context.fireChannelInactive()
    }

    /// The method, when the stream is a plain unary gRPC call to one served here.
    private func take(_ headers: HPACKHeaders) -> Method? {
        guard let path = headers.first(name: ":path"), let method = methods[path],
              headers.first(name: ":method") == "POST",
              let contentType = headers.first(name: "content-type"),
              contentType == "application/grpc" || contentType == "application/grpc+proto"
        else { return nil }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" { return nil }
        return method
    }

    private func finishRequest(context: ChannelHandlerContext, method: Method) {
        state = .running
        var request = body ?? context.channel.allocator.buffer(capacity: 0)
        body = nil
        let empty = request.readableBytes == 0
        // Exactly one uncompressed message: a flag byte, a 4-byte length, the bytes.
        guard request.readableBytes >= 5,
              let compressed = request.readInteger(as: UInt8.self),
              let length = request.readInteger(as: UInt32.self),
              compressed == 0, Int(length) == request.readableBytes
        else {
            state = .done
            let message = empty
                ? "Unary RPC requires exactly one request message"
                : "Invalid gRPC message framing in the request"
            fail(context: context, method: method, status: .internalError, message: message, reset: false)
            return
        }
        let message = Array(request.readableBytesView)
        let recorder = APIMetrics.start(service: method.service, method: method.name)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let logger = self.logger
        task = Task {
            let result: Result<[UInt8], RPCError>
            do {
                result = .success(try await method.call(message))
            } catch let error as DecodingFailure {
                result = .failure(RPCError(code: .invalidArgument, message: "Can't deserialize to message of type \(error.type)."))
            } catch let error as RPCError {
                result = .failure(error)
            } catch {
                result = .failure(EtcdAPIServer.refuse(method.name, error, logger: logger))
            }
            eventLoop.execute {
                let (handler, context) = bound.value
                handler.task = nil
                switch result {
                case .success(let bytes):
                    recorder.finish(nil)
                    handler.respond(context: context, message: bytes)
                case .failure(let error):
                    recorder.finish(error.code)
                    handler.writeStatus(context: context, status: error.code, message: error.message, headersSent: false, reset: false)
                }
            }
        }
    }

    /// A failure answered before the call ran: counted and answered as grpc-swift would.
    private func fail(context: ChannelHandlerContext, method: Method, status: RPCError.Code, message: String, reset: Bool) {
        let recorder = APIMetrics.start(service: method.service, method: method.name)
        recorder.finish(status)
        logger.notice("refused request", metadata: ["method": "\(method.name)", "code": "\(status)", "message": "\(message)"])
        writeStatus(context: context, status: status, message: message, headersSent: false, reset: reset)
    }

    private func respond(context: ChannelHandlerContext, message: [UInt8]) {
        guard context.channel.isActive else { return }
        state = .done
        let headers: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
        context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        var framed = context.channel.allocator.buffer(capacity: 5 + message.count)
        framed.writeInteger(UInt8(0))
        framed.writeInteger(UInt32(message.count))
        framed.writeBytes(message)
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(framed)))), promise: nil)
        writeStatus(context: context, status: nil, message: "", headersSent: true, reset: false)
    }

    /// The trailers (or, before any headers, a trailers-only response) with the status;
    /// `reset` then ends the stream, so that a client still sending stops.
    private func writeStatus(context: ChannelHandlerContext, status: RPCError.Code?, message: String, headersSent: Bool, reset: Bool) {
        guard context.channel.isActive else { return }
        state = .done
        var trailers: HPACKHeaders = headersSent ? [:] : [":status": "200", "content-type": "application/grpc"]
        trailers.add(name: "grpc-status", value: String(status?.rawValue ?? 0))
        if status != nil, !message.isEmpty { trailers.add(name: "grpc-message", value: Self.percentEncoded(message)) }
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

    /// A request message that does not decode: INVALID_ARGUMENT, with grpc-swift's message.
    struct DecodingFailure: Error {
        var type: String
    }
}
