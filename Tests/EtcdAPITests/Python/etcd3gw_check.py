"""Drives an etcd v3 JSON gateway with etcd3gw (OpenStack's etcd client, from PyPI)
and prints what the client returns, one line per step, so that the same run against
etcd 3.4 and against coordproxy can be compared line by line.

Usage: etcd3gw_check.py http://<host>:<port>

Values that differ by nature between two servers are printed as placeholders:
lease IDs (<lease>), cluster and member IDs, raft terms, database sizes. Revisions,
versions, counts, values, events and errors are printed as the client returns them.
"""
import sys
import threading
import urllib.parse

import etcd3gw
from etcd3gw import exceptions


def show(step, value):
    print(f"{step}: {value!r}", flush=True)


def metadata(meta):
    """The parts of a key's metadata that are facts of the history, not of the server."""
    return {k: meta[k] for k in sorted(meta) if k in ("key", "create_revision", "mod_revision", "version", "lease")}


def with_metadata(pairs, leases):
    out = []
    for value, meta in pairs:
        m = metadata(meta)
        if "lease" in m:
            m["lease"] = leases.get(str(m["lease"]), m["lease"])
        out.append((value, m))
    return out


def main():
    url = urllib.parse.urlsplit(sys.argv[1])
    host, port = url.hostname, url.port
    client = etcd3gw.client(host=host, port=port, timeout=30)
    leases = {}

    status = client.status()
    show("status.header.revision", status["header"]["revision"])
    show("status.version.major", status["version"].split(".")[:2])
    show("members", len(client.members()))

    show("put a", client.put("a", "1"))
    show("put a again", client.put("a", "2"))
    show("put b", client.put("b", "x"))
    show("put a/1", client.put("a/1", "one"))
    show("put a/2", client.put("a/2", "two"))
    show("get a", client.get("a"))
    show("get a metadata", with_metadata(client.get("a", metadata=True), leases))
    show("get missing", client.get("missing"))
    show("get_prefix a/", with_metadata(client.get_prefix("a/"), leases))
    show("get_prefix a/ sorted desc", [v for v, _ in client.get_prefix("a/", sort_order="descend", sort_target="key")])
    show("get_all", with_metadata(client.get_all(), leases))

    show("create c", client.create("c", "3"))
    show("create c again", client.create("c", "4"))
    show("replace c 3->5", client.replace("c", "3", "5"))
    show("replace c 3->6", client.replace("c", "3", "6"))
    show("get c", client.get("c"))

    txn = client.transaction({
        "compare": [{"key": etcd3gw.utils._encode("b"), "result": "EQUAL", "target": "VALUE",
                     "value": etcd3gw.utils._encode("x")}],
        "success": [{"request_put": {"key": etcd3gw.utils._encode("t"), "value": etcd3gw.utils._encode("yes")}},
                    {"request_range": {"key": etcd3gw.utils._encode("a/"), "range_end": etcd3gw.utils._encode("a0")}}],
        "failure": [],
    })
    show("txn succeeded", txn.get("succeeded"))
    show("txn revision", txn["header"]["revision"])
    show("txn responses", [sorted(r) for r in txn["responses"]])
    show("txn range count", txn["responses"][1]["response_range"].get("count"))

    lease = client.lease(ttl=60)
    leases[str(lease.id)] = "<lease>"
    show("lease ttl granted", 55 <= lease.ttl() <= 60)
    show("put l with lease", client.put("l", "leased", lease=lease))
    show("get l metadata", with_metadata(client.get("l", metadata=True), leases))
    show("lease keys", lease.keys())
    show("lease refresh", lease.refresh())
    show("lease revoke", lease.revoke())
    show("get l after revoke", client.get("l"))
    show("lease ttl after revoke", lease.ttl())

    lock = client.lock("resource", ttl=60)
    show("lock acquire", lock.acquire())
    show("lock is_acquired", lock.is_acquired())
    other = client.lock("resource", ttl=60)
    show("other lock acquire", other.acquire())
    show("lock release", lock.release())
    show("lock release again", lock.release())
    show("other lock acquire after release", other.acquire())
    show("other lock release", other.release())
    other.lease.revoke()
    lock.lease.revoke()

    # Watches from a given revision see every event from it, whenever they start.
    client.put("w", "first")
    start = client.status()["header"]["revision"]
    client.put("w", "second")
    client.delete("w")
    events, cancel = client.watch("w", start_revision=start, prev_kv=True)
    received = []
    for event in events:
        received.append((event.get("type", "PUT"), event["kv"]["key"], event["kv"].get("value"),
                         event["kv"].get("version"), event["kv"]["mod_revision"],
                         (event.get("prev_kv") or {}).get("value")))
        if len(received) == 3:
            break
    cancel()
    show("watch from a revision", received)

    event = client.watch_once("w", timeout=10, start_revision=int(start) + 1)
    show("watch_once from a revision", (event.get("type", "PUT"), event["kv"]["key"], event["kv"].get("value")))
    show("delete a", client.delete("a"))
    show("delete a again", client.delete("a"))
    show("delete_prefix a/", client.delete_prefix("a/"))
    show("get_all after", [v for v, _ in client.get_all()])

    try:
        client.post(client.get_url("/kv/range"), json={"key": etcd3gw.utils._encode("a"), "revision": 1000})
        show("future revision", "no error")
    except exceptions.Etcd3Exception as error:
        show("future revision", (type(error).__name__, error.detail_text if hasattr(error, "detail_text") else str(error)))
    try:
        client.post(client.get_url("/lease/keepalive"), json={"ID": 424242})
        show("keepalive unknown lease", "no error")
    except exceptions.Etcd3Exception as error:
        show("keepalive unknown lease", type(error).__name__)

    # Last: the number of puts it takes is not fixed.
    show("watch_prefix from now", watch_prefix_from_now(client))


def watch_prefix_from_now(client):
    """A watch from now on: a writer puts until the watch sees a put (the watch starts
    at an unknown moment, so the number of puts before it is not printed)."""
    seen = threading.Event()

    def writer():
        for _ in range(200):
            if seen.is_set():
                return
            client.put("p/once", "value")
            seen.wait(0.05)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    events, cancel = client.watch_prefix("p/")
    try:
        event = next(events)
    finally:
        seen.set()
        thread.join()
        cancel()
    client.delete_prefix("p/")
    return (event["kv"]["key"], event["kv"]["value"])


if __name__ == "__main__":
    main()
