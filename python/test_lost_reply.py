#!/usr/bin/env python3
"""Lost-reply test: every write retried by vgi-python's client is applied exactly once.

Starts an in-process HTTP proxy (stdlib threads) on 127.0.0.1:0 in front of the
server. For the first attempt of every attempt_id (and, for state_drain, of
every page: attempt_id + after_key) on the endpoints in DROP_ENDPOINTS, the
proxy forwards the request, reads the upstream's full reply, and then closes
the client's connection without sending it: the write was applied, its reply
lost. httpx raises RemoteProtocolError (a RequestError), and
FunctionStorageCfDo._post retries with the same body and attempt_id. The
server must answer the retry with the original result instead of applying the
operation again.

The test drives FunctionStorageCfDo through the proxy and checks the outcome
with a second client connected directly:
    state_put_many    values are there (and the retry is answered OK)
    state_append      each item is in state_log_scan exactly once, under the
                      ordinal the client got; ordinals strictly increasing
    queue_push        returned counts right; popping everything gives each item once
    queue_pop         every pushed item delivered exactly once, in order, none lost
    state_drain       a namespace spanning several pages comes back complete, in key
                      order, without duplicates, and is empty afterwards
    state_counter_add each result is the running sum; the final counter is the sum
    execution_clear   the (retried) reply carries the original deleted count; all gone
and that the proxy dropped at least one reply per endpoint, that every dropped
request was retried exactly once and answered 200, and that the client logged
exactly one RemoteProtocolError transport error per dropped reply.

Environment:
    VGI_CF_DO_URL       base URL, e.g. http://127.0.0.1:PORT/python
    VGI_CF_DO_TOKEN     bearer token (optional)
    SILO_TEST_DRAIN_MIB size of the drained namespace (default 12): must span
                        several of the server's state_drain pages
Exit 0 with a one-line summary, or 1 with a message on the first failure.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import random
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vgi.function_storage_cf_do import FunctionStorageCfDo

DROP_ENDPOINTS = {
    "state_append",
    "queue_push",
    "queue_pop",
    "state_drain",
    "state_counter_add",
    "state_put_many",
    "execution_clear",
}
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
KIB = 1024
MIB = 1024 * KIB


class Failure(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


def ab(x: Any) -> str:
    if isinstance(x, bytes):
        return repr(x) if len(x) <= 24 else f"{x[:16]!r}...<{len(x)} bytes>"
    if isinstance(x, (list, tuple)):
        s = ", ".join(ab(v) for v in x[:6])
        return f"[{s}{', ...' if len(x) > 6 else ''}] ({len(x)} items)"
    return repr(x)[:300]


# --------------------------------------------------------------------------- proxy


class Proxy:
    """Forwards POSTs upstream; swallows the reply of each first attempt it selects."""

    def __init__(self, upstream: str) -> None:
        u = urllib.parse.urlsplit(upstream)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported upstream URL {upstream!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)
        self.base_path = u.path.rstrip("/")
        self.lock = threading.Lock()
        self.seen: collections.Counter[tuple] = collections.Counter()  # (endpoint, attempt_id, after_key) -> requests
        self.dropped: collections.Counter[str] = collections.Counter()
        self.dropped_keys: set[tuple] = set()
        self.retry_status: dict[tuple, list[int]] = collections.defaultdict(list)
        self.requests: collections.Counter[str] = collections.Counter()
        self.drain_pages: dict[str, set] = collections.defaultdict(set)  # attempt_id -> after_keys seen
        self.errors: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the client expects
            disable_nagle_algorithm = True  # else Nagle + delayed ACK costs ~40 ms per reply

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="lost-reply-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.base_path}"

    def start(self) -> "Proxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=120)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", "application/json"), resp.read()
        finally:
            conn.close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = h.headers.get("Content-Length")
        if length is None:  # httpx sends Content-Length for json=; anything else is unexpected
            self.errors.append(f"request without Content-Length: {h.path}")
            h.close_connection = True
            return
        body = h.rfile.read(int(length))
        endpoint = h.path.rsplit("/", 1)[-1]
        headers = {"Content-Type": h.headers.get("Content-Type", "application/json")}
        if h.headers.get("Authorization"):
            headers["Authorization"] = h.headers["Authorization"]
        try:
            status, ctype, data = self._forward(h.path, body, headers)
        except OSError as e:
            self.errors.append(f"upstream {endpoint}: {type(e).__name__}: {e}")
            h.close_connection = True
            return
        drop = False
        try:
            req = json.loads(body)
        except ValueError:
            req = {}
        aid = req.get("attempt_id") if isinstance(req, dict) else None
        with self.lock:
            self.requests[endpoint] += 1
            if endpoint in DROP_ENDPOINTS and aid:
                key = (endpoint, aid, req.get("after_key"))
                if endpoint == "state_drain":
                    self.drain_pages[aid].add(req.get("after_key"))
                self.seen[key] += 1
                if self.seen[key] == 1 and status == 200:
                    drop = True
                    self.dropped[endpoint] += 1
                    self.dropped_keys.add(key)
                elif key in self.dropped_keys:
                    self.retry_status[key].append(status)
        if drop:
            # The write is applied upstream; the client never sees the reply. Closing
            # the connection (after the full request was read, so a clean FIN) makes
            # httpx raise RemoteProtocolError("Server disconnected without sending a response").
            h.close_connection = True
            return
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


class TransportErrors(logging.Handler):
    """Captures FunctionStorageCfDo._post's debug line for each transport error."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_endpoint: collections.Counter[tuple[str, str]] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if "transport error" in str(record.msg) and isinstance(record.args, tuple) and len(record.args) >= 3:
            self.by_endpoint[(str(record.args[0]), str(record.args[2]))] += 1


# --------------------------------------------------------------------------- scenarios


def scenario_put_many(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, scope: bytes, rng: random.Random) -> str:
    ns = b"put\x00"
    expected: dict[bytes, bytes] = {}
    for b in range(5):
        batch = [(b"k%d-%d" % (b, i), rng.randbytes(rng.choice([0, 10, 300, 5000]))) for i in range(6)]
        if b == 4:  # overwrite earlier keys
            batch += [(b"k0-%d" % i, b"overwritten-%d" % i) for i in range(3)]
        batch.append((b"", b"empty-key-%d" % b))
        pc.state_put_many(scope, ns, batch, shard_key=shard)
        expected.update(batch)
    keys = sorted(expected)
    got = dc.state_get_many(scope, ns, keys, shard_key=shard)
    check(got == [expected[k] for k in keys], f"state_put_many: values after lost replies differ: got {ab(got)}")
    scan = list(dc.state_scan(scope, ns, shard_key=shard))
    check(scan == sorted(expected.items()), f"state_put_many: scan after lost replies: {ab(scan)} != {ab(sorted(expected.items()))}")
    return f"put={len(expected)}"


def scenario_append(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, scope: bytes, rng: random.Random) -> str:
    ns = b"log/.."
    logs: dict[bytes, list[tuple[int, bytes]]] = {b"": [], b"k\x00": []}
    last = None
    for i in range(24):
        key = b"" if i % 3 else b"k\x00"
        item = b"" if i % 7 == 0 else (rng.randbytes(100 * KIB) if i == 5 else b"item-%d-" % i + rng.randbytes(8))
        o = pc.state_append(scope, ns, key, item, shard_key=shard)
        check(isinstance(o, int), f"state_append: ordinal {o!r} not an int")
        check(last is None or o > last, f"state_append: ordinal {o} not > previous {last} (append #{i})")
        last = o
        logs[key].append((o, item))
    for key, want in logs.items():
        got = dc.state_log_scan(scope, ns, key, shard_key=shard)
        check(
            got == want,
            f"state_append: log {key!r} after lost replies: got {len(got)} rows {ab([g[0] for g in got])}, "
            f"want {len(want)} rows with the client's ordinals {ab([w[0] for w in want])}",
        )
    return f"appends={sum(len(v) for v in logs.values())}"


def scenario_counter_add(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, scope: bytes, rng: random.Random) -> str:
    ns, key = b"ctr", b"\xff\xfe"
    deltas = [1, 2, -5, 10**12, -(10**12), 1 << 62, -(1 << 62), 7, 0]
    deltas += [rng.randint(-1000, 1000) for _ in range(8)]
    # then back to 0 and along the int64 edges: 0, MAX, -1, 0, MIN, -1 (every delta itself an int64)
    deltas += [-sum(deltas), INT64_MAX, INT64_MIN, 1, INT64_MIN, INT64_MAX]
    running, sums = 0, []
    for d in deltas:
        running += d
        check(INT64_MIN <= d <= INT64_MAX and INT64_MIN <= running <= INT64_MAX, f"internal: {d}/{running} out of int64")
        sums.append(running)
    for i, d in enumerate(deltas):
        n = pc.state_counter_add(scope, ns, key, d, shard_key=shard)
        check(n == sums[i], f"state_counter_add #{i} (delta {d}): got {n}, want running sum {sums[i]} (applied twice or lost?)")
    final = dc.state_counter_get(scope, ns, key, shard_key=shard)
    check(final == running, f"state_counter_add: final counter {final} != sum of deltas {running}")
    return f"adds={len(deltas)}"


def scenario_queue_push(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, eid: bytes, rng: random.Random) -> str:
    pushed: list[bytes] = []
    for b in range(8):
        # non-empty items only: the client maps an empty popped item to None
        items = [b"push-%d-%d:" % (b, i) + rng.randbytes(rng.choice([1, 50, 2000, 200 * KIB])) for i in range(rng.randint(1, 4))]
        n = pc.queue_push(eid, items, shard_key=shard)
        check(n == len(items), f"queue_push #{b}: count {n} != {len(items)}")
        pushed += items
    popped = []
    for _ in range(len(pushed) * 2 + 5):
        it = dc.queue_pop(eid, shard_key=shard)
        if it is None:
            break
        popped.append(it)
    check(popped == pushed, f"queue_push: popped {len(popped)} items {ab(popped)} != pushed {len(pushed)} {ab(pushed)} (doubled?)")
    return f"pushed={len(pushed)}"


def scenario_queue_pop(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, eid: bytes, rng: random.Random) -> str:
    pushed = [b"pop-%d:" % i + rng.randbytes(rng.choice([1, 30, 4000])) for i in range(20)]
    check(dc.queue_push(eid, pushed[:12], shard_key=shard) == 12, "queue_pop: setup push failed")
    check(dc.queue_push(eid, pushed[12:], shard_key=shard) == 8, "queue_pop: setup push failed")
    popped = []
    for _ in range(len(pushed) * 2 + 5):
        it = pc.queue_pop(eid, shard_key=shard)
        if it is None:
            break
        popped.append(it)
    dup = [p for p, c in collections.Counter(popped).items() if c > 1]
    lost = [p for p in pushed if p not in popped]
    check(not dup, f"queue_pop: items delivered more than once: {ab(dup)}")
    check(not lost, f"queue_pop: items lost (popped by a lost reply, not replayed): {ab(lost)}")
    check(popped == pushed, f"queue_pop: order {ab(popped)} != {ab(pushed)}")
    check(dc.queue_pop(eid, shard_key=shard) is None, "queue_pop: queue not empty afterwards")
    return f"popped={len(popped)}"


def scenario_drain(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, scope: bytes, rng: random.Random, proxy: Proxy) -> str:
    ns = b"drain\xff"
    total_mib = float(os.environ.get("SILO_TEST_DRAIN_MIB", "12"))
    expected: dict[bytes, bytes] = {b"": rng.randbytes(300 * KIB)}  # key b"": cursor must not be ""
    n_big = max(2, int(total_mib * MIB) // (256 * KIB))
    for i in range(n_big):
        expected[b"big-%04d" % i] = rng.randbytes(256 * KIB)
    for i in range(40):
        expected[b"\x00small-%d" % i] = rng.randbytes(rng.choice([0, 1, 100]))
    items = list(expected.items())
    rng.shuffle(items)
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    for kv in items:  # ~1 MiB per put_many
        if batch and size + len(kv[1]) > MIB:
            dc.state_put_many(scope, ns, batch, shard_key=shard)
            batch, size = [], 0
        batch.append(kv)
        size += len(kv[1])
    dc.state_put_many(scope, ns, batch, shard_key=shard)
    before = set(proxy.drain_pages)
    got = list(pc.state_drain(scope, ns, shard_key=shard))
    aids = set(proxy.drain_pages) - before
    check(len(aids) == 1, f"state_drain: expected one attempt_id through the proxy, saw {len(aids)}")
    pages = len(proxy.drain_pages[aids.pop()])
    keys = [k for k, _ in got]
    dup = [k for k, c in collections.Counter(keys).items() if c > 1]
    check(not dup, f"state_drain: duplicate keys {ab(dup)} ({len(got)} rows, {pages} pages)")
    missing = [k for k in expected if k not in set(keys)]
    check(not missing, f"state_drain: {len(missing)} keys missing, e.g. {ab(missing[:5])} ({pages} pages)")
    check(dict(got) == expected, "state_drain: values differ from what was put")
    check(keys == sorted(keys), "state_drain: rows not in key order")
    check(
        pages >= 2,
        f"state_drain: {sum(len(k) + len(v) for k, v in got) / MIB:.1f} MiB came back in {pages} page(s); the test needs several "
        "(raise SILO_TEST_DRAIN_MIB above the server's page byte budget)",
    )
    left = list(dc.state_scan(scope, ns, shard_key=shard))
    check(left == [], f"state_drain: namespace not empty afterwards: {ab(left)}")
    check(dc.state_get_many(scope, ns, [b"", b"big-0000"], shard_key=shard) == [None, None], "state_drain: drained keys still readable")
    again = list(pc.state_drain(scope, ns, shard_key=shard))
    check(again == [], f"state_drain: second drain of the emptied namespace returned {ab(again)}")
    return f"drained={len(got)}rows/{pages}pages"


def scenario_execution_clear(pc: FunctionStorageCfDo, dc: FunctionStorageCfDo, shard: str, scope: bytes, rng: random.Random) -> str:
    dc.state_put_many(scope, b"a", [(b"x", b"1"), (b"y", b""), (b"", b"3")], shard_key=shard)
    dc.state_put_many(scope, b"b\x00", [(b"x", rng.randbytes(1000)), (b"/", b"5")], shard_key=shard)
    for i in range(3):
        dc.state_append(scope, b"a", b"log", b"e%d" % i, shard_key=shard)
    dc.state_counter_add(scope, b"a", b"c1", 5, shard_key=shard)
    dc.state_counter_set(scope, b"b\x00", b"c2", -9, shard_key=shard)
    dc.queue_push(scope, [b"queue items survive execution_clear"], shard_key=shard)
    want = 5 + 3 + 2  # rows + log entries + counters, as FunctionStorageSqlite counts
    n = pc.execution_clear(scope, shard_key=shard)
    check(
        n == want,
        f"execution_clear: the retried call returned deleted={n}, want {want} (the original reply must be replayed, not re-executed)",
    )
    check(list(dc.state_scan(scope, b"a", shard_key=shard)) == [], "execution_clear: ns a not empty")
    check(list(dc.state_scan(scope, b"b\x00", shard_key=shard)) == [], "execution_clear: ns b not empty")
    check(dc.state_log_scan(scope, b"a", b"log", shard_key=shard) == [], "execution_clear: log not empty")
    check(dc.state_counter_get(scope, b"a", b"c1", shard_key=shard) == 0, "execution_clear: counter c1 survived")
    check(dc.state_counter_get(scope, b"b\x00", b"c2", shard_key=shard) == 0, "execution_clear: counter c2 survived")
    n2 = pc.execution_clear(scope, shard_key=shard)
    check(n2 == 0, f"execution_clear: second clear returned {n2}, want 0")
    check(dc.queue_pop(scope, shard_key=shard) == b"queue items survive execution_clear", "execution_clear touched the queue")
    return f"cleared={n}"


def main() -> int:
    url = os.environ.get("VGI_CF_DO_URL", "")
    if not url:
        print("FAIL test_lost_reply: VGI_CF_DO_URL is not set", file=sys.stderr)
        return 1
    token = os.environ.get("VGI_CF_DO_TOKEN") or None
    t0 = time.monotonic()
    cap = TransportErrors()
    lg = logging.getLogger("vgi.storage.cf_do")
    lg.setLevel(logging.DEBUG)
    lg.addHandler(cap)
    lg.propagate = False
    proxy = Proxy(url).start()
    pc = FunctionStorageCfDo(url=proxy.url, token=token)  # through the reply-losing proxy
    dc = FunctionStorageCfDo(url=url, token=token)  # direct, for checking
    run = uuid.uuid4().hex
    shard = "att-" + run  # fresh shard and ids: a reused server holds nothing here
    rng = random.Random(int(run[:8], 16))
    base = b"lost-" + run[:8].encode() + b"\x00/..\xff"
    notes = []
    try:
        notes.append(scenario_put_many(pc, dc, shard, base + b"put", rng))
        notes.append(scenario_append(pc, dc, shard, base + b"log", rng))
        notes.append(scenario_counter_add(pc, dc, shard, base + b"ctr", rng))
        notes.append(scenario_queue_push(pc, dc, shard, base + b"qpush", rng))
        notes.append(scenario_queue_pop(pc, dc, shard, base + b"qpop", rng))
        notes.append(scenario_drain(pc, dc, shard, base + b"drain", rng, proxy))
        notes.append(scenario_execution_clear(pc, dc, shard, base + b"clear", rng))
        # The test must not pass vacuously: replies were really lost and really retried.
        check(not proxy.errors, f"proxy errors: {proxy.errors[:5]}")
        for ep in sorted(DROP_ENDPOINTS):
            check(proxy.dropped[ep] >= 1, f"proxy dropped no reply for {ep} (requests seen: {proxy.requests[ep]})")
            rpe = cap.by_endpoint[(ep, "RemoteProtocolError")]
            other = {k: v for k, v in cap.by_endpoint.items() if k[0] == ep and k[1] != "RemoteProtocolError"}
            check(
                rpe == proxy.dropped[ep] and not other,
                f"{ep}: proxy dropped {proxy.dropped[ep]} replies but the client logged {rpe} RemoteProtocolError transport errors "
                f"(others: {other}) — the client's retry path was not exercised as intended",
            )
        for key in proxy.dropped_keys:
            st = proxy.retry_status.get(key, [])
            check(st == [200], f"{key[0]} attempt {key[1]} (after_key={key[2]!r}): retries answered {st}, want exactly one 200")
    except Failure as e:
        print(f"FAIL test_lost_reply: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 — e.g. the client gave up after its retries
        traceback.print_exc()
        hint = f" (proxy could not reach the upstream: {proxy.errors[:2]})" if proxy.errors else ""
        print(f"FAIL test_lost_reply: unexpected {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1
    finally:
        pc.close()
        dc.close()
        proxy.stop()
    dropped = ",".join(f"{k}={v}" for k, v in sorted(proxy.dropped.items()))
    print(f"ok test_lost_reply: {' '.join(notes)} dropped[{dropped}] {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
