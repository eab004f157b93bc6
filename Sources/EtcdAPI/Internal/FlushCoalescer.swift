import NIOCore

/// Turns the flushes of one turn of the event loop into one, at the end of the turn.
///
/// Each finished call flushes its HTTP/2 stream, and swift-nio-http2 passes each such
/// flush on to the connection: replies that the Redis connection delivered together
/// (its reader resumes a batch of calls at once, on the connection's event loop) were
/// each written with a system call of their own. This handler, next to the socket in
/// the connection's pipeline, lets the first flush of a turn schedule one flush behind
/// the work already queued on the loop and drops the others until it runs. A close
/// flushes first, so that nothing written before it is lost.
final class FlushCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var scheduled = false

    func flush(context: ChannelHandlerContext) {
        guard !scheduled else { return }
        scheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            guard handler.scheduled else { return }
            handler.scheduled = false
            context.flush()
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if scheduled {
            scheduled = false
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }
}
