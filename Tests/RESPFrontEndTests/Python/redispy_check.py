"""redis-py (from PyPI) against coordproxy's Redis-protocol listener.

Usage:
  redispy_check.py coord <port> <protocol 2|3> <parser python|hiredis>
      every COORD.* command, printed in one normalized form (RESP2's flat arrays and
      RESP3's maps print the same), so the four protocol/parser pairs can be compared
  redispy_check.py passthrough <port> <protocol> <parser>
      redis-py's own usage patterns (pipelines, MULTI/EXEC with WATCH, pub/sub,
      BLPOP, scripts); run against coordproxy and against Redis, the output must match
  redispy_check.py watch <port> <protocol> <parser>
      COORD.WATCH: history from a revision, live events, watch mode, UNWATCH, compaction
  redispy_check.py slowwatch <port>
      a RESP3 watcher that stops reading: disconnected past 32 MiB unread, told why
  redispy_check.py election <port> <protocol> <parser>
      COORD.CAMPAIGN, PROCLAIM, RESIGN, LEADER and OBSERVE across three connections
  redispy_check.py fortress <port> <protocol> <parser>
      COORD.FORTRESS (a guard, three guests) and COORD.SEMAPHORE (2 permits)
  redispy_check.py lockers <port> <name> <iterations> <log>
      takes and releases the lock <name> <iterations> times, logging
      "in <pid> <token>" and "out <pid> <token>" around each hold
  redispy_check.py hold <port> <name> <file>
      takes the lock, writes its token to <file>, then waits forever (the test kills it)
  redispy_check.py wait <port> <name> <file>
      writes "waiting" to <file>, then blocks in COORD.LOCK until killed
  redispy_check.py fenced_hold <port> <name> <file> <keepalive> <ttl> <ping seconds>
      opens a session of <ttl> s kept alive by <keepalive>, takes the lock, writes its
      token to <file>, PINGs every 0.5 s for <ping seconds>, then waits for
      <file>.go and writes the resource with its token through the fence
      (FENCED_WRITE), reporting "write <1|0> unlock <n>" to <file>.done
  redispy_check.py fenced_take <port> <name> <value>
      takes the lock (waiting up to 60 s), writes <value> through the fence and
      prints "token <t> write <1|0>"
"""
import os
import sys
import threading
import time

import redis
from redis._parsers import _HiredisParser, _RESP2Parser, _RESP3Parser


def connect(port, protocol=2, parser="python"):
    protocol = int(protocol)
    if parser == "hiredis":
        parser_class = _HiredisParser
    else:
        parser_class = _RESP3Parser if protocol == 3 else _RESP2Parser
    pool = redis.ConnectionPool(host="127.0.0.1", port=int(port), protocol=protocol, parser_class=parser_class,
                                socket_timeout=30)
    return redis.Redis(connection_pool=pool)


def as_map(reply):
    """A COORD reply map: a dict in RESP3, a flat field/value list in RESP2."""
    if isinstance(reply, dict):
        pairs = list(reply.items())
    else:
        pairs = list(zip(reply[::2], reply[1::2]))
    out = {}
    for field, value in pairs:
        field = field.decode() if isinstance(field, bytes) else field
        if field in ("kvs", "prev_kvs", "responses"):
            value = [as_map(kv) for kv in value]
        elif field == "prev_kv" and value is not None:
            value = as_map(value)
        elif field in ("more", "succeeded"):
            value = bool(value)
        out[field] = value
    return dict(sorted(out.items()))


def show(step, value):
    print(f"{step}: {value!r}", flush=True)


def error_of(call):
    try:
        return ("no error", call())
    except redis.ResponseError as error:
        return ("error", str(error))


def coord(port, protocol, parser):
    r = connect(port, protocol, parser)
    x = r.execute_command
    show("put a", as_map(x("COORD.PUT", "a", "1")))
    show("put a prevkv", as_map(x("COORD.PUT", "a", "2", "PREVKV")))
    show("put a/1", as_map(x("COORD.PUT", "a/1", "one")))
    show("put a/2", as_map(x("COORD.PUT", "a/2", "two")))
    show("get a", as_map(x("COORD.GET", "a")))
    show("get missing", as_map(x("COORD.GET", "missing")))
    show("get prefix a/ desc", as_map(x("COORD.GET", "a/", "PREFIX", "SORT", "KEY", "DESC")))
    show("get prefix a/ limit 1", as_map(x("COORD.GET", "a/", "PREFIX", "LIMIT", "1")))
    show("get all countonly", as_map(x("COORD.GET", "", "FROMKEY", "COUNTONLY")))
    show("get a at revision 2", as_map(x("COORD.GET", "a", "REV", "2")))
    show("get keysonly", as_map(x("COORD.GET", "a", "END", "a/3", "KEYSONLY")))
    show("del a/ prefix prevkv", as_map(x("COORD.DEL", "a/", "PREFIX", "PREVKV")))
    show("del missing", as_map(x("COORD.DEL", "missing")))
    show("rev", x("COORD.REV"))
    lease = as_map(x("COORD.LEASE", "GRANT", "60"))
    lease_id = lease["id"]
    show("lease grant ttl", (lease["ttl"], lease["revision"]))
    show("put l with lease", as_map(x("COORD.PUT", "l", "v", "LEASE", lease_id)))
    ttl = as_map(x("COORD.LEASE", "TTL", lease_id, "KEYS"))
    show("lease ttl keys", (ttl["granted_ttl"], ttl["keys"], ttl["id"] == lease_id))
    show("lease keepalive", as_map(x("COORD.LEASE", "KEEPALIVE", lease_id))["ttl"])
    show("lease in list", lease_id in x("COORD.LEASE", "LIST"))
    show("lease revoke", as_map(x("COORD.LEASE", "REVOKE", lease_id)))
    show("get l after revoke", as_map(x("COORD.GET", "l"))["count"])
    show("lease revoke again", error_of(lambda: x("COORD.LEASE", "REVOKE", lease_id)))
    show("compact 3", as_map(x("COORD.COMPACT", "3")))
    show("get compacted", error_of(lambda: x("COORD.GET", "a", "REV", "2")))
    show("get future", error_of(lambda: x("COORD.GET", "a", "REV", "1000")))
    show("put empty key", error_of(lambda: x("COORD.PUT", "", "v")))
    show("put unknown lease", error_of(lambda: x("COORD.PUT", "k", "v", "LEASE", "12345")))
    show("put wrong arity", error_of(lambda: x("COORD.PUT", "k")))
    show("get bad option", error_of(lambda: x("COORD.GET", "k", "BOGUS")))
    show("get bad limit", error_of(lambda: x("COORD.GET", "k", "LIMIT", "x")))
    show("unknown", error_of(lambda: x("COORD.NOSUCH")))
    session = as_map(x("COORD.SESSION"))
    show("session ttl", session["ttl"])
    lock = x("COORD.LOCK", "jobs")
    show("lock key is the session's", lock[0] == b"jobs/" + format(session["lease"], "x").encode())
    created = as_map(x("COORD.GET", lock[0]))["kvs"][0]["create_revision"]
    show("lock token is above the key's create revision (it carries the store's epoch)", lock[1] > created)
    other = connect(port, protocol, parser)
    show("trylock by another connection", other.execute_command("COORD.TRYLOCK", "jobs"))
    before = time.monotonic()
    show("lock with timeout by another connection", other.execute_command("COORD.LOCK", "jobs", "TIMEOUT", "300"))
    show("it waited", time.monotonic() - before >= 0.25)
    show("unlock by a connection that does not hold it", other.execute_command("COORD.UNLOCK", "jobs"))
    show("unlock", x("COORD.UNLOCK", "jobs"))
    second = other.execute_command("COORD.TRYLOCK", "jobs")
    show("the next holder's token is greater", second[1] > lock[1])
    show("tokens of one epoch differ as create revisions do",
         second[1] - lock[1] == as_map(x("COORD.GET", second[0]))["kvs"][0]["create_revision"] - created)
    other.connection_pool.disconnect()
    # The proxy revokes the closed connection's session as soon as it sees the close.
    deadline = time.monotonic() + 10
    while as_map(x("COORD.GET", "jobs/", "PREFIX", "COUNTONLY"))["count"] != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    show("a closed connection's lock is gone", as_map(x("COORD.GET", "jobs/", "PREFIX", "COUNTONLY"))["count"])
    def txn(*words):
        reply = as_map(x("COORD.TXN", *words))
        return (reply["succeeded"], [sorted((k, v) for k, v in answer.items() if k != "revision") for answer in reply["responses"]])
    show("txn create", txn("IF", "t", "VERSION", "=", "0", "THEN", "PUT", "t", "1", "GET", "t", "KEYSONLY", "ELSE", "GET", "t"))
    show("txn create again", txn("IF", "t", "VERSION", "=", "0", "THEN", "PUT", "t", "1", "ELSE", "GET", "t", "COUNTONLY"))
    show("txn compare and swap", txn("IF", "t", "VALUE", "=", "1", "t", "MOD", ">", "0", "THEN", "PUT", "t", "2", "PREVKV", "DEL", "t2"))
    show("txn bad compare", error_of(lambda: x("COORD.TXN", "IF", "t", "COLOR", "=", "1")))
    show("txn duplicate key", error_of(lambda: x("COORD.TXN", "THEN", "PUT", "t", "1", "PUT", "t", "2")))
    # The options of the core commands, each on its own: o/c created first (version 3),
    # then o/b (version 2), then o/a; values "333", "2" and "9".
    base = x("COORD.REV")
    for key, value in [("o/c", "3"), ("o/b", "20"), ("o/a", "9"), ("o/b", "2"), ("o/c", "33"), ("o/c", "333")]:
        x("COORD.PUT", key, value)
    def keys(*words):
        return [kv["key"].decode() for kv in as_map(x("COORD.GET", *words))["kvs"]]
    show("opt end", keys("o/a", "END", "o/c"))
    show("opt sort key asc", keys("o/", "PREFIX", "SORT", "KEY", "ASC"))
    show("opt sort version desc", keys("o/", "PREFIX", "SORT", "VERSION", "DESC"))
    show("opt sort create asc", keys("o/", "PREFIX", "SORT", "CREATE", "ASC"))
    show("opt sort modify desc", keys("o/", "PREFIX", "SORT", "MODIFY", "DESC"))
    show("opt sort value asc", keys("o/", "PREFIX", "SORT", "VALUE", "ASC"))
    show("opt minmod", keys("o/", "PREFIX", "MINMOD", str(base + 5)))
    show("opt maxmod", keys("o/", "PREFIX", "MAXMOD", str(base + 4)))
    show("opt mincreate", keys("o/", "PREFIX", "MINCREATE", str(base + 2)))
    show("opt maxcreate", keys("o/", "PREFIX", "MAXCREATE", str(base + 1)))
    kept = as_map(x("COORD.PUT", "o/b", "", "IGNORE_VALUE", "PREVKV"))
    after = as_map(x("COORD.GET", "o/b"))["kvs"][0]
    show("opt ignore_value", (kept["prev_kv"]["value"], after["value"], after["version"], after["mod_revision"] - base))
    lease = as_map(x("COORD.LEASE", "GRANT", "60"))["id"]
    x("COORD.PUT", "o/l", "1", "LEASE", lease)
    x("COORD.PUT", "o/l", "2", "IGNORE_LEASE")
    show("opt ignore_lease", as_map(x("COORD.GET", "o/l"))["kvs"][0]["lease"] == lease)
    show("opt ignore_value missing key", error_of(lambda: x("COORD.PUT", "o/none", "", "IGNORE_VALUE")))
    show("opt txn create lease != <", txn("IF", "o/c", "CREATE", "<", str(base + 2), "o/a", "LEASE", "=", "0", "o/b", "VERSION", "!=", "5",
                                         "o/l", "LEASE", "=", str(lease), "THEN", "GET", "o/c", "KEYSONLY"))
    show("opt txn lease compare fails", txn("IF", "o/a", "LEASE", "=", str(lease), "THEN", "PUT", "o/x", "1", "ELSE", "GET", "o/x", "COUNTONLY"))
    deleted = as_map(x("COORD.DEL", "o/a", "END", "o/c", "PREVKV"))
    show("opt del end", (deleted["deleted"], [kv["key"] for kv in deleted["prev_kvs"]]))
    deleted = as_map(x("COORD.DEL", "o/", "FROMKEY", "PREVKV"))
    show("opt del fromkey", [kv["key"] for kv in deleted["prev_kvs"]])
    show("opt lease list", lease in x("COORD.LEASE", "LIST"))
    show("opt lease keepalive", as_map(x("COORD.LEASE", "KEEPALIVE", lease))["ttl"])
    show("ping", r.ping())
    r.close()


def passthrough(port, protocol, parser):
    r = connect(port, protocol, parser)
    for key in r.scan_iter("pt:*"):
        r.delete(key)
    show("set", r.set("pt:a", "1"))
    show("get", r.get("pt:a"))
    show("incr", r.incr("pt:n"))
    show("hset", r.hset("pt:h", mapping={"f1": "v1", "f2": "v2"}))
    show("hgetall", sorted(r.hgetall("pt:h").items()))
    show("zadd", r.zadd("pt:z", {"a": 1.5, "b": 2}))
    show("zrange withscores", r.zrange("pt:z", 0, -1, withscores=True))
    pipe = r.pipeline(transaction=False)
    for i in range(50):
        pipe.set(f"pt:p{i}", i)
        pipe.get(f"pt:p{i}")
    results = pipe.execute()
    show("pipeline", (len(results), results[:4], results[-1]))
    with r.pipeline() as pipe:
        pipe.watch("pt:n")
        current = int(pipe.get("pt:n"))
        pipe.multi()
        pipe.set("pt:n", current + 10)
        pipe.get("pt:n")
        show("watch multi exec", pipe.execute())
    with r.pipeline() as pipe:
        pipe.watch("pt:n")
        pipe.multi()
        r.set("pt:n", "changed")
        pipe.set("pt:n", "lost")
        try:
            pipe.execute()
            show("watch conflict", "executed")
        except redis.WatchError:
            show("watch conflict", "WatchError")
    show("after conflict", r.get("pt:n"))
    show("script", r.eval("return redis.call('incrby', KEYS[1], ARGV[1])", 1, "pt:n2", 5))
    show("blpop timeout", r.blpop(["pt:list"], timeout=0.2))

    def push_later():
        time.sleep(0.2)
        connect(port, protocol, parser).rpush("pt:list", "item")
    threading.Thread(target=push_later).start()
    show("blpop woken", r.blpop(["pt:list"], timeout=10))
    pubsub = r.pubsub()
    pubsub.subscribe("pt:chan")
    show("subscribed", pubsub.get_message(timeout=5)["type"])
    publisher = connect(port, protocol, parser)
    show("publish", publisher.publish("pt:chan", "hello"))
    message = pubsub.get_message(timeout=5)
    show("message", (message["type"], message["channel"], message["data"]))
    pubsub.unsubscribe("pt:chan")
    pubsub.close()
    show("select", r.execute_command("SELECT", "0"))
    show("error", error_of(lambda: r.execute_command("LPUSH", "pt:a", "x")))
    show("client setname", r.client_setname("checker"))
    show("client getname", r.client_getname())
    show("wrong arity", error_of(lambda: r.execute_command("GET")))
    for key in r.scan_iter("pt:*"):
        r.delete(key)
    r.close()


def event_form(message):
    """A watch push, normalized: [kind, id, revision, [(type, key, value, version, prev value)]]."""
    kind = message[0].decode()
    if kind != "event":
        return (kind, message[1], message[2].decode() if isinstance(message[2], bytes) else message[2])
    events = []
    for event in message[3]:
        event = as_map(event)
        kv = as_map(event["kv"])
        prev = as_map(event["prev_kv"])["value"] if event.get("prev_kv") else None
        events.append((event["type"].decode(), kv["key"], kv["value"], kv["version"], prev, kv["mod_revision"]))
    return (kind, message[1], message[2], events)


def watch(port, protocol, parser):
    """COORD.WATCH from a revision (history replayed), then live events, RESP2 watch
    mode, COORD.UNWATCH, and a watch from a compacted revision."""
    r = connect(port, protocol, parser)
    x = r.execute_command
    x("COORD.PUT", "w/a", "1")          # revision 2
    x("COORD.PUT", "w/b", "2")          # 3
    x("COORD.DEL", "w/a")               # 4
    x("COORD.PUT", "other", "x")        # 5, outside the range
    conn = r.connection_pool.get_connection()
    read = (lambda: conn.read_response(push_request=True)) if int(protocol) == 3 else conn.read_response
    conn.send_command("COORD.WATCH", "w/", "PREFIX", "REV", "2", "PREVKV")
    show("watch reply", conn.read_response())
    # History first: the events from revision 2 up to the current revision.
    replayed = []
    while len(replayed) < 3:
        replayed.extend(event_form(read())[3])
    show("replayed", replayed)
    x("COORD.PUT", "w/c", "3")          # 6, live
    x("COORD.PUT", "w/c", "4")          # 7
    # Events of several revisions may come in one message (as etcd batches them);
    # the message's revision is then the last one's.
    live = []
    while len(live) < 2:
        message = event_form(read())
        live.extend(message[3])
        show("live message revision is its last event's", message[2] == message[3][-1][5])
    show("live", live)
    conn.send_command("COORD.WATCH", "w/b")
    show("second watch reply", conn.read_response())
    if int(protocol) == 2:
        conn.send_command("COORD.GET", "w/b")
        show("a command in watch mode", error_of(conn.read_response))
    x("COORD.DEL", "w/b")               # 8: both watches see it
    first, second = event_form(read()), event_form(read())
    show("both watches", sorted([first, second]))
    conn.send_command("COORD.UNWATCH")
    show("unwatch", conn.read_response())
    conn.send_command("COORD.GET", "w/c", "COUNTONLY")
    show("a command after unwatch", as_map(conn.read_response())["count"])
    x("COORD.COMPACT", "6")
    conn.send_command("COORD.WATCH", "w/", "PREFIX", "REV", "3")
    show("compacted watch reply", conn.read_response())
    show("compacted watch", event_form(read()))
    r.connection_pool.release(conn)
    r.connection_pool.disconnect()


def slowwatch(port):
    """A watcher that stops reading is disconnected once it leaves more than 32 MiB of
    events unread, told why by a canceled push behind the events it was sent; a
    watcher on another connection gets every event, and the proxy serves on."""
    import socket
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", int(port)))
    # A PING behind the watch: its PONG comes once the watch has been answered.
    slow.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*3\r\n$11\r\nCOORD.WATCH\r\n$3\r\nsw/\r\n$6\r\nPREFIX\r\n*1\r\n$4\r\nPING\r\n")
    slow.settimeout(30)
    greeting = b""
    while not greeting.endswith(b"+PONG\r\n"):
        greeting += slow.recv(4096)
    fast = connect(port, 3, "python")
    conn = fast.connection_pool.get_connection()
    conn.send_command("COORD.WATCH", "sw/", "PREFIX")
    conn.read_response()
    count = 64
    received = []
    others = []
    def follow():
        try:
            while len(received) < count:
                message = event_form(conn.read_response(push_request=True))
                if message[0] != "event":
                    others.append(message)
                    return
                received.extend(event[5] for event in message[3])
        except Exception as error:
            others.append(repr(error))
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    # The slow client reads again once every event has reached the reading watcher (and
    # a second more, for the slow one's): its watch was ended long before, past 32 MiB
    # of events plus what the sockets hold, and it reads within the proxy's 30 s grace
    # for reading what was queued.
    unread = {"bytes": 0, "data": b"", "closed": False}
    def drain():
        while len(received) < count and follower.is_alive():
            time.sleep(0.01)
        time.sleep(1)
        while True:
            chunk = slow.recv(1 << 20)
            if not chunk:
                unread["closed"] = True
                return
            unread["bytes"] += len(chunk)
            unread["data"] = (unread["data"] + chunk)[-4096:]
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    writer = connect(port, 3, "python")
    start = writer.execute_command("COORD.REV")
    value = b"x" * (1 << 20)
    for i in range(count):
        # The reading watcher is kept within 8 events (8 MiB) of the writer, far below
        # the limit however busy the machine (on a loaded one it fell 32 MiB behind and
        # was rightly disconnected too); the slow one falls behind by all of them.
        waited = time.time()
        while len(received) < i - 8 and follower.is_alive() and time.time() - waited < 60:
            time.sleep(0.005)
        writer.execute_command("COORD.PUT", f"sw/{i % 4}", value)
    follower.join(120)
    drainer.join(120)
    if others:
        show("the reading watcher was sent instead", others)
    show("the reading watcher got every event in order", received == list(range(start + 1, start + 1 + count)))
    show("the slow watcher was told why", b"OUTPUTLIMIT this connection left more than 32 MiB of watch events unread" in unread["data"])
    show("its connection closed", unread["closed"])
    show("it was sent more than 32 MiB first", unread["bytes"] > 32 << 20)
    show("the proxy serves on", as_map(writer.execute_command("COORD.GET", "sw/", "PREFIX", "COUNTONLY"))["count"])


def election(port, protocol, parser):
    """COORD.CAMPAIGN / PROCLAIM / RESIGN / LEADER / OBSERVE across three connections."""
    a, b, o = (connect(port, protocol, parser) for _ in range(3))
    observer = o.connection_pool.get_connection()
    read = (lambda: observer.read_response(push_request=True)) if int(protocol) == 3 else observer.read_response
    def leader_value(message):
        return (message[0].decode(), as_map(message[2])["value"])
    show("leader before", a.execute_command("COORD.LEADER", "jobs"))
    observer.send_command("COORD.OBSERVE", "jobs")
    show("observe reply", observer.read_response())
    elected = as_map(a.execute_command("COORD.CAMPAIGN", "jobs", "a1"))
    show("a elected", (elected["name"], elected["key"].startswith(b"jobs/"), elected["revision"] > 0))
    show("observed", leader_value(read()))
    show("b campaign timeout", b.execute_command("COORD.CAMPAIGN", "jobs", "b1", "TIMEOUT", "300"))
    show("a proclaims", as_map(a.execute_command("COORD.PROCLAIM", "jobs", "a2"))["revision"] > elected["revision"])
    show("observed", leader_value(read()))
    show("b proclaims", error_of(lambda: b.execute_command("COORD.PROCLAIM", "jobs", "x")))
    show("leader", as_map(a.execute_command("COORD.LEADER", "jobs"))["value"])
    result = {}
    def campaign_b():
        result["b"] = as_map(b.execute_command("COORD.CAMPAIGN", "jobs", "b1"))
    thread = threading.Thread(target=campaign_b)
    thread.start()
    # b waits in line behind a: two candidates.
    deadline = time.monotonic() + 10
    while as_map(a.execute_command("COORD.GET", "jobs/", "PREFIX", "COUNTONLY"))["count"] != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    show("a resigns", a.execute_command("COORD.RESIGN", "jobs"))
    thread.join(10)
    show("b elected after a resigned", result.get("b", {}).get("revision", 0) > elected["revision"])
    show("observed", leader_value(read()))
    show("a resigns again", a.execute_command("COORD.RESIGN", "jobs"))
    # b's connection closes while leading: its session goes, and so does its leadership.
    b.connection_pool.disconnect()
    deadline = time.monotonic() + 10
    while a.execute_command("COORD.LEADER", "jobs") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    show("leader after b's connection closed", a.execute_command("COORD.LEADER", "jobs"))
    o.connection_pool.release(observer)
    for client in (a, o):
        client.connection_pool.disconnect()


def fortress(port, protocol, parser):
    """COORD.FORTRESS across a guard and three guests, and COORD.SEMAPHORE with 2 permits."""
    g, v1, v2, v3 = (connect(port, protocol, parser) for _ in range(4))
    F = "COORD.FORTRESS"
    show("visit while locked", v1.execute_command(F, "VISIT", "charm", "TIMEOUT", "300"))
    show("unlock", g.execute_command(F, "UNLOCK", "charm"))
    show("visit 1", v1.execute_command(F, "VISIT", "charm"))
    show("visit 2", v2.execute_command(F, "VISIT", "charm"))
    show("visit 1 again", error_of(lambda: v1.execute_command(F, "VISIT", "charm")))
    show("lockdown with visits inside", g.execute_command(F, "LOCKDOWN", "charm", "TIMEOUT", "300"))
    show("visit after the gate shut", v3.execute_command(F, "VISIT", "charm", "TIMEOUT", "300"))
    order = []
    def lockdown():
        order.append(("lockdown", g.execute_command(F, "LOCKDOWN", "charm")))
    thread = threading.Thread(target=lockdown)
    thread.start()
    time.sleep(0.2)
    order.append(("leave 1", v1.execute_command(F, "LEAVE", "charm")))
    time.sleep(0.2)
    order.append(("guest 2's connection closes", None))
    v2.connection_pool.disconnect()
    thread.join(20)
    show("order", order)
    show("leave without a visit", v1.execute_command(F, "LEAVE", "charm"))
    S = "COORD.SEMAPHORE"
    show("acquire 1", v1.execute_command(S, "ACQUIRE", "pool", "2"))
    show("tryacquire 2", v3.execute_command(S, "TRYACQUIRE", "pool", "2"))
    show("tryacquire 3", g.execute_command(S, "TRYACQUIRE", "pool", "2"))
    show("acquire 3 timeout", g.execute_command(S, "ACQUIRE", "pool", "2", "TIMEOUT", "300"))
    show("other permits", error_of(lambda: v1.execute_command(S, "ACQUIRE", "pool", "3")))
    show("release 1", v1.execute_command(S, "RELEASE", "pool"))
    show("acquire 3", g.execute_command(S, "ACQUIRE", "pool", "2", "TIMEOUT", "5000"))
    show("release 1 again", v1.execute_command(S, "RELEASE", "pool"))
    for client in (g, v1, v3):
        client.connection_pool.disconnect()


def lockers(port, name, iterations, log):
    r = connect(port)
    pid = os.getpid()
    for _ in range(int(iterations)):
        key, token = r.execute_command("COORD.LOCK", name)
        with open(log, "a") as f:
            f.write(f"in {pid} {token}\n")
        time.sleep(0.001)
        with open(log, "a") as f:
            f.write(f"out {pid} {token}\n")
        assert r.execute_command("COORD.UNLOCK", name) == 1
    r.close()


def hold(port, name, path):
    r = connect(port)
    key, token = r.execute_command("COORD.LOCK", name)
    with open(path + ".tmp", "w") as f:
        f.write(f"{token}\n")
    os.rename(path + ".tmp", path)
    while True:
        time.sleep(1)


def wait(port, name, path):
    r = connect(port)
    r.ping()
    with open(path, "w") as f:
        f.write("waiting\n")
    r.execute_command("COORD.LOCK", name)
    with open(path, "a") as f:
        f.write("acquired\n")
    while True:
        time.sleep(1)


# The protected resource checks the fencing token (a lock's create revision): a write
# with a token below the highest it has accepted is refused, so a holder that lost
# its lock while stopped cannot overwrite its successor's work.
FENCED_WRITE = """
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < fence then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
"""


def fenced_hold(port, name, path, keepalive, ttl, ping_seconds):
    r = connect(port)
    assert r.execute_command("COORD.SESSION", "TTL", ttl, "KEEPALIVE", keepalive) == b"OK"
    key, token = r.execute_command("COORD.LOCK", name)
    with open(path + ".tmp", "w") as f:
        f.write(f"{token}\n")
    os.rename(path + ".tmp", path)
    until = time.monotonic() + float(ping_seconds)
    while time.monotonic() < until:
        r.ping()
        time.sleep(0.5)
    while not os.path.exists(path + ".go"):
        time.sleep(0.05)
    wrote = r.eval(FENCED_WRITE, 1, "resource", token, f"late write of {token}")
    unlocked = r.execute_command("COORD.UNLOCK", name)
    with open(path + ".done.tmp", "w") as f:
        f.write(f"write {wrote} unlock {unlocked}\n")
    os.rename(path + ".done.tmp", path + ".done")
    while True:
        time.sleep(1)


def fenced_take(port, name, value):
    r = connect(port)
    key, token = r.execute_command("COORD.LOCK", name, "TIMEOUT", "60000")
    wrote = r.eval(FENCED_WRITE, 1, "resource", token, value)
    print(f"token {token} write {wrote}", flush=True)
    r.close()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"coord": coord, "passthrough": passthrough, "watch": watch, "slowwatch": slowwatch, "election": election, "fortress": fortress, "lockers": lockers, "hold": hold, "wait": wait,
     "fenced_hold": fenced_hold, "fenced_take": fenced_take}[mode](*args)
