import NIOCore

/// One command of coordproxy's own, as Redis's command table describes a command:
/// name, arity, flags, key positions and documentation. Parsing (arity errors),
/// `COMMAND INFO`, `COMMAND DOCS` and `COMMAND LIST` all read this table.
public struct RESPCommandSpec: Sendable {
    /// The name in upper case (`COORD.PUT`).
    public var name: String
    /// Redis's arity: the exact argument count with the name, or its negative when
    /// that is the minimum.
    public var arity: Int
    /// Redis command flags (`write`, `readonly`, `blocking`, `fast`).
    public var flags: [String]
    /// First key, last key and key step, as COMMAND INFO gives them (0 0 0: no
    /// Redis keys; coordination keys live in the store, not in Redis's keyspace).
    public var keys: (first: Int, last: Int, step: Int) = (0, 0, 0)
    /// One sentence.
    public var summary: String
    /// The syntax after the name, as Redis's docs write it.
    public var syntax: String
    /// How long it takes.
    public var complexity: String

    func arityAllows(_ count: Int) -> Bool {
        arity >= 0 ? count == arity : count >= -arity
    }

    /// COMMAND INFO's entry (Redis 7 shape).
    var info: RESPValue {
        .array([
            .bulk(name.lowercased()), .integer(Int64(arity)),
            .array(flags.map { .simpleString($0) }),
            .integer(Int64(keys.first)), .integer(Int64(keys.last)), .integer(Int64(keys.step)),
            .array([.simpleString("@coordination")]), .array([]), .array([]), .array([]),
        ])
    }

    /// COMMAND DOCS's entry.
    var docs: RESPValue {
        .fields([
            "summary": .bulk(summary),
            "since": .bulk("0.1.0"),
            "group": .bulk("coordination"),
            "complexity": .bulk(complexity),
            "syntax": .bulk("\(name) \(syntax)"),
        ])
    }
}

/// coordproxy's own commands.
public enum RESPCommandTable {
    /// Every COORD.* command.
    public static let commands: [RESPCommandSpec] = [
        .init(name: "COORD.PUT", arity: -3, flags: ["write"],
              summary: "Sets a key of the store to a value (etcd's Put): a new revision, the key's version plus one.",
              syntax: "key value [LEASE id|SESSION] [PREVKV] [IGNORE_VALUE] [IGNORE_LEASE]", complexity: "O(log N)"),
        .init(name: "COORD.GET", arity: -2, flags: ["readonly"],
              summary: "Reads one key or a range of keys of the store (etcd's Range), at the current or an older revision.",
              syntax: "key [PREFIX | FROMKEY | END rangeEnd] [LIMIT n] [REV r] [KEYSONLY] [COUNTONLY] [SORT KEY|VERSION|CREATE|MODIFY|VALUE ASC|DESC] [MINMOD r] [MAXMOD r] [MINCREATE r] [MAXCREATE r]",
              complexity: "O(log N + M) for M keys returned"),
        .init(name: "COORD.DEL", arity: -2, flags: ["write"],
              summary: "Deletes one key or a range of keys of the store (etcd's DeleteRange).",
              syntax: "key [PREFIX | FROMKEY | END rangeEnd] [PREVKV]", complexity: "O(log N + M) for M keys deleted"),
        .init(name: "COORD.TXN", arity: -2, flags: ["write"],
              summary: "A transaction on the store (etcd's Txn): if every compare holds, run the THEN operations, else the ELSE ones, atomically, in one revision; replies succeeded, revision and each operation's reply.",
              syntax: "[IF key VALUE|VERSION|CREATE|MOD|LEASE =|!=|<|> operand ...] [THEN op ...] [ELSE op ...], op: PUT key value [LEASE id] [PREVKV] | GET key [range options] | DEL key [PREFIX|END rangeEnd] [PREVKV]",
              complexity: "O(log N) per operation"),
        .init(name: "COORD.COMPACT", arity: 2, flags: ["write"],
              summary: "Forgets the history before a revision (etcd's Compact).",
              syntax: "revision", complexity: "O(M) for M revisions forgotten"),
        .init(name: "COORD.REV", arity: 1, flags: ["readonly", "fast"],
              summary: "The store's current revision.",
              syntax: "", complexity: "O(1)"),
        .init(name: "COORD.WATCH", arity: -2, flags: ["readonly", "pubsub"],
              summary: "Watches a key or a range: replies [watch, id, revision], then pushes [event, id, revision, events] for every change after it, in revision order, with no gaps (RESP2: the connection enters watch mode, as SUBSCRIBE).",
              syntax: "key [PREFIX | FROMKEY | END rangeEnd] [REV r] [PREVKV] [NOPUT] [NODELETE]", complexity: "O(1) per event"),
        .init(name: "COORD.UNWATCH", arity: -1, flags: ["pubsub"],
              summary: "Ends watches of this connection (all of them without IDs); replies how many ended.",
              syntax: "[id ...]", complexity: "O(N) for N watches"),
        .init(name: "COORD.LEASE", arity: -2, flags: ["write"],
              summary: "Grants, revokes, renews and inspects leases (etcd's Lease service).",
              syntax: "GRANT ttl [ID id] | REVOKE id | KEEPALIVE id | TTL id [KEYS] | LIST", complexity: "O(1); REVOKE: O(M) for M attached keys"),
        .init(name: "COORD.SESSION", arity: -1, flags: ["write"],
              summary: "This connection's session: its lease, TTL and keep-alive mode (opening it if needed), or the TTL and keep-alive (ACTIVITY: while the client sends commands; CONNECTION: while it is connected) to open it with.",
              syntax: "[TTL seconds] [KEEPALIVE ACTIVITY|CONNECTION]", complexity: "O(1)"),
        .init(name: "COORD.LOCK", arity: -2, flags: ["write", "blocking"],
              summary: "Acquires a lock shared with every client of the store, waiting in line; replies the lock key and its fencing token, or nil on timeout.",
              syntax: "name [TIMEOUT ms]", complexity: "O(log N) per waiter ahead"),
        .init(name: "COORD.TRYLOCK", arity: 2, flags: ["write"],
              summary: "Acquires a lock only if nobody holds it; replies the lock key and its fencing token, or nil.",
              syntax: "name", complexity: "O(log N)"),
        .init(name: "COORD.UNLOCK", arity: 2, flags: ["write"],
              summary: "Releases a lock this connection holds (or leaves its queue); replies 1, or 0 when it held nothing (never took it, or lost it when its session lapsed).",
              syntax: "name", complexity: "O(log N)"),
        .init(name: "COORD.CAMPAIGN", arity: -3, flags: ["write", "blocking"],
              summary: "Campaigns in an election with a value and waits to be elected; replies the leader key (name, key, revision, lease), or nil on timeout. A leader campaigning again proclaims.",
              syntax: "name value [TIMEOUT ms]", complexity: "O(log N) per candidate ahead"),
        .init(name: "COORD.PROCLAIM", arity: 3, flags: ["write"],
              summary: "Publishes a new value as this connection's leader, without another election.",
              syntax: "name value", complexity: "O(log N)"),
        .init(name: "COORD.RESIGN", arity: 2, flags: ["write"],
              summary: "Gives up leadership (or the place in line) so that the next candidate is elected; replies 1, or 0 when not campaigning.",
              syntax: "name", complexity: "O(log N)"),
        .init(name: "COORD.LEADER", arity: 2, flags: ["readonly"],
              summary: "The leader's key-value (key, value, revisions, version, lease), or nil when nobody campaigns.",
              syntax: "name", complexity: "O(log N)"),
        .init(name: "COORD.OBSERVE", arity: 2, flags: ["readonly", "pubsub"],
              summary: "Follows an election: replies [observe, id], then pushes [leader, id, kv] for the leader's value and every later one, in order (RESP2: watch mode).",
              syntax: "name", complexity: "O(1) per value"),
        .init(name: "COORD.FORTRESS", arity: -3, flags: ["write", "blocking"],
              summary: "juju's fortress, shared by every client of the store: UNLOCK opens the gate; LOCKDOWN shuts it and waits until every visit has left; VISIT waits until it is open and stays inside until LEAVE (or the connection closes). Timeouts reply nil.",
              syntax: "UNLOCK name | LOCKDOWN name [TIMEOUT ms] | VISIT name [TIMEOUT ms] | LEAVE name", complexity: "O(V) for V visits"),
        .init(name: "COORD.SEMAPHORE", arity: -3, flags: ["write", "blocking"],
              summary: "A counting semaphore of N permits, first come first served, held on this connection's session; timeouts and a busy TRYACQUIRE reply nil.",
              syntax: "ACQUIRE name permits [TIMEOUT ms] | TRYACQUIRE name permits | RELEASE name", complexity: "O(log N) per waiter ahead"),
    ]

    static let byName: [String: RESPCommandSpec] = Dictionary(uniqueKeysWithValues: commands.map { ($0.name.lowercased(), $0) })
}
