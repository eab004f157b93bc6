import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Synchronization

/// A server transport that answers calls of unknown services and methods itself, with
/// the UNIMPLEMENTED message etcd's grpc-go server gives (`unknown service
/// etcdserverpb.Foo`, `unknown method Bar for service etcdserverpb.KV`), so that a
/// client or an operator sees which call was wrong (for etcd's calls that coordproxy
/// does not serve, with what to do instead: ``UnservedMethods``). grpc-swift's router
/// answers them with a message that names nothing. Every other call goes to the server as usual.
final class MethodCheckingTransport<Base: ListeningServerTransport>: ListeningServerTransport {
    typealias Bytes = Base.Bytes

    let base: Base
    /// The served methods, by service: filled when the server configures its transport.
    private let methods = Mutex<[String: Set<String>]>([:])

    init(_ base: Base) {
        self.base = base
    }

    func configure(context: GRPCServerContext) {
        var byService: [String: Set<String>] = [:]
        for method in context.methods {
            byService[method.service.fullyQualifiedService, default: []].insert(method.method)
        }
        methods.withLock { $0 = byService }
        base.configure(context: context)
    }

    /// etcd's message when `descriptor` is not served; nil when it is.
    func unknown(_ descriptor: MethodDescriptor) -> String? {
        let service = descriptor.service.fullyQualifiedService
        return methods.withLock { methods in
            guard let served = methods[service] else { return "unknown service \(service)" }
            return served.contains(descriptor.method) ? nil : UnservedMethods.message(service: service, method: descriptor.method)
        }
    }

    func listen(streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void) async throws {
        try await base.listen { stream, context in
            if let message = self.unknown(stream.descriptor) {
                try? await stream.outbound.write(.status(Status(code: .unimplemented, message: message), [:]))
                await stream.outbound.finish()
                return
            }
            await streamHandler(stream, context)
        }
    }

    func beginGracefulShutdown() {
        base.beginGracefulShutdown()
    }

    var listeningAddress: GRPCNIOTransportCore.SocketAddress {
        get async throws { try await base.listeningAddress }
    }
}
