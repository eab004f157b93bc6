import NIOCore

/// Answers the client's HTTP/2 PINGs itself, before the HTTP/2 handler sees them.
///
/// etcd's clients (grpc-go) ping for bandwidth estimation after every burst of data
/// they receive: under load that is hundreds of PINGs a second per connection.
/// swift-nio-http2 treats more than 200 control frames in 30 s as an attack and
/// closes the connection with GOAWAY ENHANCE_YOUR_CALM, and grpc-swift-nio-transport
/// does not let a server raise that limit. grpc-go then re-sends the requests the
/// GOAWAY marks unprocessed, and the load test saw a Put applied twice. etcd's own
/// server (grpc-go) answers such pings at any rate. So this handler, first in the
/// connection's pipeline, splits the inbound byte stream into frames, answers every
/// PING that is not an ACK with its ACK at once, and passes every other byte on
/// unchanged. (ACKs of the server's own keep-alive pings pass through.)
final class PingAnswerer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private static let frameHeaderLength = 9
    private static let pingFrameLength = 9 + 8
    private static let pingType: UInt8 = 0x6
    private static let ackFlag: UInt8 = 0x1

    /// Bytes still to pass through before the next frame header: at first the client
    /// connection preface ("PRI * HTTP/2.0...", 24 bytes), then each frame's payload.
    private var passThrough = 24
    /// An incomplete frame header, or an incomplete PING frame.
    private var pending: ByteBuffer?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = unwrapInboundIn(data)
        var output = context.channel.allocator.buffer(capacity: input.readableBytes)
        var answered = false
        while input.readableBytes > 0 {
            if passThrough > 0 {
                let count = min(passThrough, input.readableBytes)
                var slice = input.readSlice(length: count)!
                output.writeBuffer(&slice)
                passThrough -= count
                continue
            }
            // At a frame boundary: gather the 9-byte header (and a PING's 8 bytes).
            var frame = pending ?? context.channel.allocator.buffer(capacity: Self.pingFrameLength)
            pending = nil
            if frame.readableBytes < Self.frameHeaderLength {
                let count = min(Self.frameHeaderLength - frame.readableBytes, input.readableBytes)
                var slice = input.readSlice(length: count)!
                frame.writeBuffer(&slice)
                if frame.readableBytes < Self.frameHeaderLength {
                    pending = frame
                    break
                }
            }
            let view = frame.readableBytesView
            let start = view.startIndex
            let length = Int(view[start]) << 16 | Int(view[start + 1]) << 8 | Int(view[start + 2])
            let type = view[start + 3], flags = view[start + 4]
            guard type == Self.pingType, flags & Self.ackFlag == 0, length == 8 else {
                output.writeBuffer(&frame)
                passThrough = length
                continue
            }
            let count = min(Self.pingFrameLength - frame.readableBytes, input.readableBytes)
            var slice = input.readSlice(length: count)!
            frame.writeBuffer(&slice)
            if frame.readableBytes < Self.pingFrameLength {
                pending = frame
                break
            }
            // The ACK: the same frame with the ACK flag, the same 8 bytes of data.
            frame.setInteger(Self.ackFlag, at: frame.readerIndex + 4)
            context.write(wrapOutboundOut(frame), promise: nil)
            answered = true
        }
        if answered { context.flush() }
        if output.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(output)) }
    }
}
