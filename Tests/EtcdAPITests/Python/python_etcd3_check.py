"""Drives an etcd v3 gRPC endpoint with python-etcd3 (PyPI's etcd3, on grpcio) and
prints what the client returns, one line per step, so that the same run against
etcd 3.4 and against coordproxy can be compared line by line.

Usage: python_etcd3_check.py <host:port>

Lease IDs, cluster and member IDs and raft terms differ between servers by nature
and are left out; revisions, versions, values, counts, events and errors are printed.
"""
import sys
import threading

import etcd3
import etcd3.exceptions


def show(step, value):
    print(f"{step}: {value!r}", flush=True)


def meta(m):
    return (m.key, m.create_revision, m.mod_revision, m.version)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    c = etcd3.client(host=host, port=int(port), timeout=30)
    show("status leader is the member", c.status().leader.id == c.status().leader.id)
    show("members", len(list(c.members)))
    show("put a", c.put("a", "1").header.revision)
    show("put a prev_kv", c.put("a", "2", prev_kv=True).prev_kv.value)
    c.put("a/1", "one")
    c.put("a/2", "two")
    value, m = c.get("a")
    show("get a", (value, meta(m)))
    show("get missing", c.get("missing"))
    show("get_prefix a/", [(v, meta(m)) for v, m in c.get_prefix("a/")])
    show("get_prefix sorted desc", [v for v, _ in c.get_prefix("a/", sort_order="descend", sort_target="key")])
    show("get_range", [v for v, _ in c.get_range("a", "a/3")])
    show("get_all", [v for v, _ in c.get_all()])
    show("replace a 2->3", c.replace("a", "2", "3"))
    show("replace a 2->4", c.replace("a", "2", "4"))
    ok, responses = c.transaction(
        compare=[c.transactions.value("a") == "3", c.transactions.version("a") > 1],
        success=[c.transactions.put("t", "yes"), c.transactions.get("a/", "a0")],
        failure=[c.transactions.delete("a")],
    )
    show("transaction", (ok, [[(v, meta(m)) for v, m in r] if isinstance(r, list) else type(r).__name__ for r in responses]))
    ok, _ = c.transaction(compare=[c.transactions.create("nope") > 0], success=[], failure=[c.transactions.put("f", "1")])
    show("failed transaction", ok)
    lease = c.lease(60)
    show("lease ttl", 55 <= lease.remaining_ttl <= 60 and lease.granted_ttl == 60)
    c.put("l", "leased", lease=lease)
    show("lease keys", lease.keys)
    lease.refresh()
    lease.revoke()
    show("get l after revoke", c.get("l"))
    # python-etcd3 0.12's Lock.acquire fails inside tenacity (any version from PyPI
    # today) before it reaches the server, so its locks are not exercised here.
    start = c.put("w", "first").header.revision
    c.put("w", "second")
    c.delete("w")
    events, cancel = c.watch("w", start_revision=start, prev_kv=True)
    seen = []
    for event in events:
        seen.append((type(event).__name__, event.key, event.value, event.version, event.mod_revision, event.prev_value))
        if len(seen) == 3:
            break
    cancel()
    show("watch from a revision", [(kind, key, value, version, mod - start, prev) for kind, key, value, version, mod, prev in seen])
    show("delete a", c.delete("a"))
    show("delete a again", c.delete("a"))
    show("delete_prefix a/", c.delete_prefix("a/").deleted)
    show("compact", c.compact(start))
    try:
        c.put("", "empty key")
        show("empty key", "accepted")
    except Exception as error:
        show("empty key", (type(error).__name__, str(error).split("details = ")[-1].split("\n")[0]))


if __name__ == "__main__":
    main()
