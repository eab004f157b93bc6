// Coordination: etcd v3 semantics (KV, Txn, Lease, Watch, Compaction) over Redis.
//
// This module is where the store contract of DESIGN.md is implemented, on top of
// RedisClient. It is empty until that work lands; it exists so that the package
// layout is visible and builds from the start.
@_exported import RedisClient
