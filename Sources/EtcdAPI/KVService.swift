import Coordination
import GRPCCore
import Logging
import SwiftProtobuf

/// etcd's `KV` service (v3rpc `key.go`): Range, Put, DeleteRange, Txn and Compact,
/// each one store request with etcd's semantics and errors.
public struct KVService: Etcdserverpb_KV.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.store = store
        self.member = member
        self.logger = logger
    }

    public func range(request: Etcdserverpb_RangeRequest, context: ServerContext) async throws -> Etcdserverpb_RangeResponse {
        try await answer("Range") { try await range(request) }
    }

    public func put(request: Etcdserverpb_PutRequest, context: ServerContext) async throws -> Etcdserverpb_PutResponse {
        try await answer("Put") { try await put(request) }
    }

    public func deleteRange(request: Etcdserverpb_DeleteRangeRequest, context: ServerContext) async throws -> Etcdserverpb_DeleteRangeResponse {
        try await answer("DeleteRange") { try await deleteRange(request) }
    }

    public func txn(request: Etcdserverpb_TxnRequest, context: ServerContext) async throws -> Etcdserverpb_TxnResponse {
        try await answer("Txn") { try await txn(request) }
    }

    public func compact(request: Etcdserverpb_CompactionRequest, context: ServerContext) async throws -> Etcdserverpb_CompactionResponse {
        try await answer("Compact") { try await compact(request) }
    }

    // The calls themselves, shared with ``GRPCFastPath`` (which maps and logs their
    // errors as ``answer(_:_:)`` does).

    func range(_ request: Etcdserverpb_RangeRequest) async throws -> Etcdserverpb_RangeResponse {
        let response = try await store.get(request.key.bytes, options: RangeOptions(request))
        return WireConversion.rangeResponse(response, header: member.header(response.header.revision))
    }

    func put(_ request: Etcdserverpb_PutRequest) async throws -> Etcdserverpb_PutResponse {
        let response = try await store.put(request.key.bytes, request.value.bytes, options: PutOptions(request))
        return WireConversion.putResponse(response, header: member.header(response.header.revision))
    }

    func deleteRange(_ request: Etcdserverpb_DeleteRangeRequest) async throws -> Etcdserverpb_DeleteRangeResponse {
        let response = try await store.delete(request.key.bytes, rangeEnd: request.rangeEnd.bytes, prevKV: request.prevKv)
        return WireConversion.deleteResponse(response, header: member.header(response.header.revision))
    }

    func txn(_ request: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse {
        let response = try await store.txn(try WireConversion.txn(request))
        return WireConversion.txnResponse(response, header: member.header)
    }

    func compact(_ request: Etcdserverpb_CompactionRequest) async throws -> Etcdserverpb_CompactionResponse {
        let header = try await store.compact(request.revision)
        var response = Etcdserverpb_CompactionResponse()
        response.header = member.header(header.revision)
        return response
    }

    /// The five calls, for ``GRPCFastPath``, by gRPC path, their errors mapped and
    /// logged as through grpc-swift.
    func fastPathMethods() -> GRPCFastPath.Table {
        func method<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message>(
            _ name: String, _ body: @escaping @Sendable (Request) async throws -> Response
        ) -> (String, GRPCFastPath.Method) {
            GRPCFastPath.method(service: "etcdserverpb.KV", name) { request in
                try await answer(name) { try await body(request) }
            }
        }
        return Dictionary(uniqueKeysWithValues: [
            method("Range") { try await range($0) },
            method("Put") { try await put($0) },
            method("DeleteRange") { try await deleteRange($0) },
            method("Txn") { try await txn($0) },
            method("Compact") { try await compact($0) },
        ])
    }

    private func answer<T>(_ method: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw EtcdAPIServer.refuse(method, error, logger: logger)
        }
    }
}
