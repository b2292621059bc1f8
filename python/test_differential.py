#!/usr/bin/env python3
"""Differential test: `silo serve`'s /python endpoints vs vgi-python's own SQLite store.

Runs one seeded random sequence of every `FunctionStorage` operation against
vgi-python's reference implementation (`FunctionStorageSqlite`, temp files) and
against vgi-python's HTTP client (`FunctionStorageCfDo`) pointed at the server,
and compares every result. Neither side's code was written here.

Environment:
    VGI_CF_DO_URL     base URL of the endpoints, e.g. http://127.0.0.1:PORT/python
    VGI_CF_DO_TOKEN   bearer token (optional)
    SILO_TEST_SEED    random seed (default 20260501)
    SILO_TEST_OPS     number of random operations (default 3000)
    SILO_TEST_SELFCHECK=1  debug the test itself: a second SQLite store (wrapped
                      to mimic the server's known differences) stands in for the
                      server; VGI_CF_DO_URL is not needed.

Exit status 0 and a one-line summary on success; on the first mismatch it prints
the op number, the op and its arguments, both results (abbreviated) and exits 1.

Normalised differences (legitimate, both sides keep the FunctionStorage contract):
    a) log ordinals (see `Ordinals`),
    b) no empty queue items are pushed (see `gen_queue_item`),
    c) drain order: the reference's ``DELETE ... RETURNING`` yields rows in
       table order, not key order, although the protocol promises key order;
       the reference's drain result is sorted, and the server's must already
       be in strictly ascending key order.
"""

from __future__ import annotations

import bisect
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from vgi.function_storage import FunctionStorageSqlite

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
KIB = 1024
MIB = 1024 * KIB

# The client sends shard_key "loc-anon" when given "" (FunctionStorageCfDo._post),
# so "" and "loc-anon" are one shard on the server; the reference models that.
SHARDS = ["", "loc-anon", "att-0f1e2d3c4b5a69788796a5b4c3d2e1f0", "att-00000000000000000000000000000001"]


def norm_shard(shard: str) -> str:
    return shard or "loc-anon"


# Small pools so operations collide; awkward bytes throughout.
SCOPES = [b"", b"\x00", b"scope-1", b"/", b"..", b"\xff\xfe", b"\x00/..\xff"]
SCOPE_W = [3, 2, 4, 1, 1, 2, 1]
NSS = [b"", b"ns", b"\x00", b"/", b"..", b"\xff\xfe", b"_vgi/tio_state"]
NS_W = [2, 4, 2, 1, 1, 2, 1]
# Unsigned byte order matters: b"a" < b"a\x00" < b"ab" < b"b"; b"\xff" < b"\xff\xfe".
KEYS = [b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"ab", b"b", b"/", b"..", b"\xff", b"\xff\xfe", b"k" * 200]
BOUNDS = [*KEYS, b"a\x00\x00", b"\x01", b"\xff\xff", b"m"]
EIDS = SCOPES  # queue execution ids deliberately equal scope ids: execution_clear must not touch queues


# --------------------------------------------------------------------------- abbreviation


def ab(x: Any, depth: int = 0) -> str:
    """Abbreviated repr for failure messages."""
    if isinstance(x, (bytes, bytearray)):
        b = bytes(x)
        return repr(b) if len(b) <= 24 else f"{b[:16]!r}...<{len(b)} bytes>"
    if isinstance(x, (list, tuple)):
        if depth > 2:
            return f"<{type(x).__name__} of {len(x)}>"
        inner = ", ".join(ab(v, depth + 1) for v in x[:6])
        more = f", ...(+{len(x) - 6} more, {len(x)} total)" if len(x) > 6 else ""
        o, c = ("[", "]") if isinstance(x, list) else ("(", ")")
        return f"{o}{inner}{more}{c}"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}={ab(v, depth + 1)}" for k, v in x.items()) + "}"
    s = repr(x)
    return s if len(s) <= 300 else s[:300] + "..."


def first_diff(a: Any, b: Any) -> str:
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"first difference at index {i}: reference {ab(x)} vs server {ab(y)}"
        if len(a) != len(b):
            return f"lengths differ: reference {len(a)} vs server {len(b)}"
    return ""


# --------------------------------------------------------------------------- ordinals


class Ordinals:
    """Normalisation (a): log ordinals.

    Both sides promise only strictly increasing ordinals in append order (the
    reference's are AUTOINCREMENT ids of one SQLite file per shard; the
    server's are store-wide, not dense from 1). We keep, per shard, the map
    reference ordinal <-> server ordinal, check each side is strictly
    increasing within the shard, translate `after_id` arguments (always -1 or
    an ordinal previously returned in the same shard) per side, and compare
    `state_log_scan` results through the map.
    """

    def __init__(self) -> None:
        self.to_srv: dict[tuple[str, int], int] = {}
        self.to_ref: dict[tuple[str, int], int] = {}
        self.last_ref: dict[str, int] = {}
        self.last_srv: dict[str, int] = {}
        self.by_shard: dict[str, list[int]] = {}  # reference ordinals in append order
        self.by_log: dict[tuple, list[int]] = {}  # (shard, scope, ns, key) -> reference ordinals

    def record(self, shard: str, log: tuple, ref_ord: int, srv_ord: int) -> str:
        """Record an append; return an error description or ""."""
        err = ""
        if shard in self.last_ref and ref_ord <= self.last_ref[shard]:
            err = f"reference ordinal {ref_ord} not > previous {self.last_ref[shard]} in shard {shard!r}"
        if shard in self.last_srv and srv_ord <= self.last_srv[shard]:
            err = f"server ordinal {srv_ord} not > previous {self.last_srv[shard]} in shard {shard!r}"
        if (shard, srv_ord) in self.to_ref:
            err = f"server ordinal {srv_ord} returned twice in shard {shard!r}"
        if err:
            return err
        self.last_ref[shard] = ref_ord
        self.last_srv[shard] = srv_ord
        self.to_srv[(shard, ref_ord)] = srv_ord
        self.to_ref[(shard, srv_ord)] = ref_ord
        self.by_shard.setdefault(shard, []).append(ref_ord)
        self.by_log.setdefault(log, []).append(ref_ord)
        return ""

    def srv_after(self, shard: str, ref_after: int) -> int:
        return -1 if ref_after == -1 else self.to_srv[(shard, ref_after)]

    def translate(self, shard: str, rows: list[tuple[int, bytes]]) -> list[tuple[Any, bytes]]:
        return [(self.to_ref.get((shard, i), f"<unmapped server ordinal {i}>"), v) for i, v in rows]


# --------------------------------------------------------------------------- self-check stand-in


class SelfCheckServer:
    """Stands in for FunctionStorageCfDo under SILO_TEST_SELFCHECK=1.

    Another FunctionStorageSqlite per shard, wrapped to show the server's
    legitimate differences: store-wide non-dense log ordinals, key-ordered
    drain, lazily iterated scan/drain, "" and "loc-anon" the same shard.
    """

    def __init__(self, tmpdir: str) -> None:
        self._tmp = tmpdir
        self._dbs: dict[str, FunctionStorageSqlite] = {}
        self._next = 1_000_003
        self._glob: dict[str, list[int]] = {}  # shard -> server ordinals (ascending)
        self._loc: dict[str, list[int]] = {}  # shard -> local sqlite ordinals (parallel)

    def _db(self, shard_key: str) -> FunctionStorageSqlite:
        s = norm_shard(shard_key)
        if s not in self._dbs:
            self._dbs[s] = FunctionStorageSqlite(os.path.join(self._tmp, f"selfcheck-{len(self._dbs)}.db"))
        return self._dbs[s]

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, shard_key: str = "", **kw: Any) -> Any:
            return getattr(self._db(shard_key), name)(*args, **kw)

        return call

    def state_scan(self, *a: Any, shard_key: str = "", **kw: Any) -> Any:
        return iter(self._db(shard_key).state_scan(*a, **kw))

    def state_drain(self, *a: Any, shard_key: str = "", **kw: Any) -> Any:
        return iter(sorted(self._db(shard_key).state_drain(*a, **kw)))

    def state_append(self, *a: Any, shard_key: str = "", **kw: Any) -> int:
        local = self._db(shard_key).state_append(*a, **kw)
        self._next += 3 + local % 11
        s = norm_shard(shard_key)
        self._glob.setdefault(s, []).append(self._next)
        self._loc.setdefault(s, []).append(local)
        return self._next

    def state_log_scan(self, *a: Any, after_id: int = -1, shard_key: str = "", **kw: Any) -> list:
        s = norm_shard(shard_key)
        g, loc = self._glob.get(s, []), self._loc.get(s, [])
        i = bisect.bisect_right(g, after_id) - 1
        rows = self._db(shard_key).state_log_scan(*a, after_id=loc[i] if i >= 0 else -1, **kw)
        return [(g[loc.index(r)], v) for r, v in rows]


# --------------------------------------------------------------------------- op generation


@dataclass
class Op:
    name: str
    shard: str
    args: dict[str, Any] = field(default_factory=dict)


def rand_bytes(rng: random.Random, n: int) -> bytes:
    r = rng.random()
    if r < 0.1:
        return b"\x00" * n
    if r < 0.15:
        return (b"/..\xff\xfe\x00" * (n // 6 + 1))[:n]
    return rng.randbytes(n)


def gen_value(rng: random.Random) -> bytes:
    """0 bytes up to a few hundred KiB; mostly small, a few large."""
    r = rng.random()
    if r < 0.08:
        return b""
    if r < 0.68:
        return rand_bytes(rng, rng.randint(1, 64))
    if r < 0.93:
        return rand_bytes(rng, rng.randint(65, 4 * KIB))
    if r < 0.985:
        return rand_bytes(rng, rng.randint(4 * KIB, 64 * KIB))
    return rand_bytes(rng, rng.randint(64 * KIB, 400 * KIB))


def gen_queue_item(rng: random.Random) -> bytes:
    # Normalisation (b): queue items must be non-empty. FunctionStorageCfDo.queue_pop
    # does `base64.b64decode(data["item"]) if data["item"] else None`, so an empty
    # item (base64 "") comes back as None — a client quirk, not a server bug.
    # So no b"" item is ever pushed. (Empty keys, values and log items are fine.)
    v = gen_value(rng)
    return v if v else b"\x00"


def gen_key(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.85:
        return rng.choice(KEYS)
    if r < 0.98:
        return rand_bytes(rng, rng.randint(1, 12))
    return rand_bytes(rng, rng.randint(256, 1024))


def gen_bound(rng: random.Random) -> bytes | None:
    return None if rng.random() < 0.35 else rng.choice(BOUNDS)


WEIGHTS = {
    "queue_push": 7,
    "queue_pop": 8,
    "queue_clear": 2,
    "state_get_many": 10,
    "state_put_many": 14,
    "state_scan": 12,
    "state_drain": 3,
    "state_delete": 5,
    "execution_clear": 1.5,
    "state_append": 10,
    "state_log_scan": 8,
    "state_counter_get": 4,
    "state_counter_add": 6,
    "state_counter_set": 2,
    "state_counter_delete": 1.5,
}


class Generator:
    def __init__(self, rng: random.Random, refs: dict[str, FunctionStorageSqlite], ords: Ordinals) -> None:
        self.rng = rng
        self.refs = refs
        self.ords = ords
        self.pending: list[Op] = []
        self.counters: set[tuple] = set()
        self.names = list(WEIGHTS)
        self.weights = [WEIGHTS[n] for n in self.names]

    def place(self) -> tuple[str, bytes, bytes]:
        rng = self.rng
        return rng.choice(SHARDS), rng.choices(SCOPES, SCOPE_W)[0], rng.choices(NSS, NS_W)[0]

    def big_cycle(self) -> None:
        """Queue a multi-MiB namespace: fill, scan every way (paged), drain.

        ~6 MiB in one namespace, so scans and the drain run over several pages
        of the server's byte budget (the client follows `next_after`). Key b""
        carries a large value: a forward page ending at key b"" must not yield
        an empty (falsy) cursor, or the client stops paging early.
        """
        rng = self.rng
        shard, scope, ns = self.place()
        items = [(b"", rand_bytes(rng, 300 * KIB))]
        items += [(k, rand_bytes(rng, rng.randint(200 * KIB, 400 * KIB))) for k in KEYS[1:8]]
        items += [(b"big-%03d" % i + rng.randbytes(2), rand_bytes(rng, rng.randint(150 * KIB, 350 * KIB))) for i in range(14)]
        items += [(rand_bytes(rng, 4), gen_value(rng)) for _ in range(20)]
        rng.shuffle(items)
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for kv in items:  # put_many requests of at most ~1 MiB of raw bytes
            if batch and size + len(kv[1]) > MIB:
                self.pending.append(Op("state_put_many", shard, dict(scope=scope, ns=ns, items=batch)))
                batch, size = [], 0
            batch.append(kv)
            size += len(kv[1])
        self.pending.append(Op("state_put_many", shard, dict(scope=scope, ns=ns, items=batch)))
        n = len({k for k, _ in items})
        for start, end, reverse, limit in [
            (None, None, False, None),
            (None, None, True, None),
            (None, None, False, n - 2),
            (None, None, True, n // 2 + 1),
            (b"a", b"big-010", False, None),
            (b"\x00", None, True, 9),
            (b"b", b"\xff", False, 12),
        ]:
            self.pending.append(
                Op("state_scan", shard, dict(scope=scope, ns=ns, start=start, end=end, reverse=reverse, limit=limit))
            )
        self.pending.append(Op("state_get_many", shard, dict(scope=scope, ns=ns, keys=[k for k, _ in items[:10]])))
        self.pending.append(Op("state_drain", shard, dict(scope=scope, ns=ns)))
        self.pending.append(Op("state_scan", shard, dict(scope=scope, ns=ns, start=None, end=None, reverse=False, limit=None)))

    def next(self) -> Op:
        if self.pending:
            return self.pending.pop(0)
        rng = self.rng
        name = rng.choices(self.names, self.weights)[0]
        shard, scope, ns = self.place()
        a: dict[str, Any]
        if name == "queue_push":
            n = 0 if rng.random() < 0.04 else rng.randint(1, 8)  # an empty push is legal: count 0
            a = dict(eid=scope, items=[gen_queue_item(rng) for _ in range(n)])
        elif name in ("queue_pop", "queue_clear"):
            a = dict(eid=scope)
        elif name == "state_get_many":
            n = 0 if rng.random() < 0.03 else rng.randint(1, 8)
            a = dict(scope=scope, ns=ns, keys=[gen_key(rng) for _ in range(n)])  # duplicates possible
        elif name == "state_put_many":
            items = [(gen_key(rng), gen_value(rng)) for _ in range(rng.randint(1, 6))]
            if rng.random() < 0.1:  # same key twice in one batch: the later one wins
                items.append((items[0][0], gen_value(rng)))
            a = dict(scope=scope, ns=ns, items=items)
        elif name == "state_scan":
            limit = None if rng.random() < 0.5 else rng.choice([0, 1, 2, 3, 5, 8, 20])
            a = dict(scope=scope, ns=ns, start=gen_bound(rng), end=gen_bound(rng), reverse=rng.random() < 0.4, limit=limit)
        elif name == "state_drain":
            a = dict(scope=scope, ns=ns)
        elif name == "state_delete":
            r = rng.random()
            if r < 0.45:  # key list; [] must delete nothing (not the namespace)
                a = dict(scope=scope, ns=ns, keys=[gen_key(rng) for _ in range(rng.randint(0, 5))], start=None, end=None)
            elif r < 0.85:
                start, end = gen_bound(rng), gen_bound(rng)
                if start is None and end is None:
                    start = rng.choice(BOUNDS)
                a = dict(scope=scope, ns=ns, keys=None, start=start, end=end)
            else:
                a = dict(scope=scope, ns=ns, keys=None, start=None, end=None)
        elif name == "execution_clear":
            a = dict(scope=scope)
        elif name == "state_append":
            item = b"" if rng.random() < 0.08 else (gen_value(rng) if rng.random() < 0.5 else rand_bytes(rng, rng.randint(0, 48)))
            if len(item) > 64 * KIB:
                item = item[: 64 * KIB]
            a = dict(scope=scope, ns=ns, key=rng.choice(KEYS[:8]), item=item)
        elif name == "state_log_scan":
            key = rng.choice(KEYS[:8])
            s = norm_shard(shard)
            if self.ords.by_log and rng.random() < 0.6:  # mostly a log that has entries
                s, scope, ns, key = rng.choice(sorted(self.ords.by_log))
                shard = s
            own = self.ords.by_log.get((s, scope, ns, key), [])
            anyo = self.ords.by_shard.get(s, [])
            r = rng.random()
            if own and r < 0.55:
                after = rng.choice(own)
            elif anyo and r < 0.75:
                after = rng.choice(anyo)
            else:
                after = -1
            limit = None if rng.random() < 0.5 else rng.choice([0, 1, 2, 3, 10])
            a = dict(scope=scope, ns=ns, key=key, after=after, limit=limit)
        else:  # counters
            key = rng.choice(KEYS[:8])
            if self.counters and rng.random() < 0.6:  # mostly a counter used before
                shard, scope, ns, key = rng.choice(sorted(self.counters))
            self.counters.add((shard, scope, ns, key))
            a = dict(scope=scope, ns=ns, key=key)
            if name == "state_counter_add":
                cur = self.refs[norm_shard(shard)].state_counter_get(scope, ns, key)
                r = rng.random()
                if r < 0.7:
                    delta = rng.randint(-1000, 1000)
                elif r < 0.85:
                    delta = rng.randint(INT64_MIN - cur, INT64_MAX - cur)
                elif r < 0.92:
                    delta = INT64_MAX - cur
                else:
                    delta = INT64_MIN - cur
                # Keep the delta and the result within int64 (outside it the reference
                # raises OverflowError or silently goes to REAL).
                delta = max(INT64_MIN - cur, INT64_MIN, min(INT64_MAX - cur, INT64_MAX, delta))
                a["delta"] = delta
            elif name == "state_counter_set":
                a["value"] = rng.choice([0, -1, 1, INT64_MAX, INT64_MIN, rng.randint(-(10**6), 10**6), rng.randint(INT64_MIN, INT64_MAX)])
        return Op(name, shard, a)


# --------------------------------------------------------------------------- execution


def execute(store: Any, op: Op, shard_key: str, after_id: int | None = None) -> Any:
    a, n, kw = op.args, op.name, {"shard_key": shard_key}
    if n == "queue_push":
        return store.queue_push(a["eid"], a["items"], **kw)
    if n == "queue_pop":
        return store.queue_pop(a["eid"], **kw)
    if n == "queue_clear":
        return store.queue_clear(a["eid"], **kw)
    if n == "state_get_many":
        return store.state_get_many(a["scope"], a["ns"], a["keys"], **kw)
    if n == "state_put_many":
        return store.state_put_many(a["scope"], a["ns"], a["items"], **kw)
    if n == "state_scan":
        return list(store.state_scan(a["scope"], a["ns"], start=a["start"], end=a["end"], reverse=a["reverse"], limit=a["limit"], **kw))
    if n == "state_drain":
        return list(store.state_drain(a["scope"], a["ns"], **kw))
    if n == "state_delete":
        return store.state_delete(a["scope"], a["ns"], a["keys"], start=a["start"], end=a["end"], **kw)
    if n == "execution_clear":
        return store.execution_clear(a["scope"], **kw)
    if n == "state_append":
        return store.state_append(a["scope"], a["ns"], a["key"], a["item"], **kw)
    if n == "state_log_scan":
        return store.state_log_scan(a["scope"], a["ns"], a["key"], after_id=after_id, limit=a["limit"], **kw)
    if n == "state_counter_get":
        return store.state_counter_get(a["scope"], a["ns"], a["key"], **kw)
    if n == "state_counter_add":
        return store.state_counter_add(a["scope"], a["ns"], a["key"], a["delta"], **kw)
    if n == "state_counter_set":
        return store.state_counter_set(a["scope"], a["ns"], a["key"], a["value"], **kw)
    if n == "state_counter_delete":
        return store.state_counter_delete(a["scope"], a["ns"], a["key"], **kw)
    raise AssertionError(n)


def capture(fn: Any) -> tuple:
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 — reported as a mismatch
        return ("exc", type(e).__name__, str(e)[:500])


def payload_bytes(res: Any) -> int:
    if isinstance(res, list):
        return sum(len(kv[0]) + len(kv[1]) for kv in res if isinstance(kv, tuple))
    return 0


class Runner:
    def __init__(self, refs: dict[str, FunctionStorageSqlite], srv: Any, seed: int) -> None:
        self.refs = refs
        self.srv = srv
        self.seed = seed
        self.ords = Ordinals()
        self.stats: dict[str, int] = {"scan_fwd_max": 0, "scan_rev_max": 0, "drain_max": 0, "bytes": 0}
        self.touched_logs: set[tuple] = set()
        self.touched_counters: set[tuple] = set()

    def fail(self, num: Any, op: Op, ref: Any, srv: Any, note: str = "") -> None:
        print(f"FAIL test_differential (seed={self.seed}) at op #{num}: {op.name} shard={op.shard!r}", file=sys.stderr)
        print(f"  args:      {ab(op.args)}", file=sys.stderr)
        print(f"  reference: {ab(ref)}", file=sys.stderr)
        print(f"  server:    {ab(srv)}", file=sys.stderr)
        d = first_diff(ref[1] if ref[0] == "ok" else None, srv[1] if srv[0] == "ok" else None)
        if d:
            print(f"  {d}", file=sys.stderr)
        if note:
            print(f"  note: {note}", file=sys.stderr)
        sys.exit(1)

    def step(self, num: Any, op: Op) -> Any:
        """Run `op` on both sides and compare; returns the (agreed) result."""
        shard = norm_shard(op.shard)
        ref_store = self.refs[shard]
        ref_after = srv_after = None
        if op.name == "state_log_scan":
            ref_after = op.args["after"]
            srv_after = self.ords.srv_after(shard, ref_after)
        ref = capture(lambda: execute(ref_store, op, op.shard, ref_after))
        srv = capture(lambda: execute(self.srv, op, op.shard, srv_after))
        if ref[0] == "exc":  # every generated op is valid: the reference raising is a bug in this test
            self.fail(num, op, ref, srv, "the REFERENCE raised: bug in test_differential's op generator")
        if srv[0] == "exc":
            self.fail(num, op, ref, srv, "the server side raised")
        r, s = ref[1], srv[1]
        a = op.args
        if op.name == "state_append":
            log = (shard, a["scope"], a["ns"], a["key"])
            self.touched_logs.add(log)
            if not isinstance(s, int):
                self.fail(num, op, ref, srv, "server ordinal is not an int")
            err = self.ords.record(shard, log, r, s)
            if err:
                self.fail(num, op, ref, srv, err)
            return r
        if op.name == "state_log_scan":
            self.touched_logs.add((shard, a["scope"], a["ns"], a["key"]))
            t = self.ords.translate(shard, s)
            if t != r:
                self.fail(num, op, ref, ("ok", t), f"log rows compared through the ordinal map (server after_id={srv_after}); raw server rows: {ab(s)}")
            return r
        if op.name == "state_drain":
            # Normalisation (c): the reference drains in table order; the protocol promises key order.
            r = sorted(r)
            keys = [k for k, _ in s]
            if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
                self.fail(num, op, ("ok", r), srv, "server drain not in strictly ascending key order")
        if op.name.startswith("state_counter"):
            self.touched_counters.add((shard, a["scope"], a["ns"], a["key"]))
        if r != s:
            self.fail(num, op, ("ok", r), srv)
        nbytes = payload_bytes(s)
        self.stats["bytes"] += nbytes
        if op.name == "state_scan":
            k = "scan_rev_max" if a["reverse"] else "scan_fwd_max"
            self.stats[k] = max(self.stats[k], nbytes)
        elif op.name == "state_drain":
            self.stats["drain_max"] = max(self.stats["drain_max"], nbytes)
        return r

    def final_sweep(self) -> int:
        """Compare everything still stored, on both sides; returns #comparisons."""
        n = 0
        shards = sorted({norm_shard(s) for s in SHARDS})
        for shard in shards:
            for scope in SCOPES:
                for ns in NSS:
                    n += 1
                    self.step(f"sweep-{n}", Op("state_scan", shard, dict(scope=scope, ns=ns, start=None, end=None, reverse=False, limit=None)))
        for shard, scope, ns, key in sorted(self.touched_logs):
            n += 1
            self.step(f"sweep-{n}", Op("state_log_scan", shard, dict(scope=scope, ns=ns, key=key, after=-1, limit=None)))
        for shard, scope, ns, key in sorted(self.touched_counters):
            n += 1
            self.step(f"sweep-{n}", Op("state_counter_get", shard, dict(scope=scope, ns=ns, key=key)))
        for shard in shards:
            for eid in EIDS:
                while True:  # pop both queues dry, comparing each item
                    n += 1
                    if self.step(f"sweep-{n}", Op("queue_pop", shard, dict(eid=eid))) is None:
                        break
        return n


def main() -> int:
    seed = int(os.environ.get("SILO_TEST_SEED", "20260501"))
    nops = int(os.environ.get("SILO_TEST_OPS", "3000"))
    selfcheck = os.environ.get("SILO_TEST_SELFCHECK") == "1"
    url = os.environ.get("VGI_CF_DO_URL", "")
    if not selfcheck and not url:
        print("FAIL test_differential: VGI_CF_DO_URL is not set", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="silo-diff-") as tmp:
        # One reference store per shard: FunctionStorageSqlite ignores shard_key,
        # and shards are isolated on the server.
        refs = {s: FunctionStorageSqlite(os.path.join(tmp, f"ref-{i}.db")) for i, s in enumerate(sorted({norm_shard(x) for x in SHARDS}))}
        if selfcheck:
            srv: Any = SelfCheckServer(tmp)
        else:
            from vgi.function_storage_cf_do import FunctionStorageCfDo

            srv = FunctionStorageCfDo(url=url, token=os.environ.get("VGI_CF_DO_TOKEN") or None)
        runner = Runner(refs, srv, seed)
        # Start from a clean slate on the server: a reused server may hold rows from an
        # earlier run under the same pooled ids (the reference starts empty).
        try:
            for shard in refs:
                for scope in SCOPES:
                    srv.execution_clear(scope, shard_key=shard)
                    srv.queue_clear(scope, shard_key=shard)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL test_differential: clearing the pooled ids on the server raised {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        rng = random.Random(seed)
        gen = Generator(rng, refs, runner.ords)
        big_at = {nops // 5, nops // 2, (4 * nops) // 5}
        i = 0
        while i < nops or gen.pending:
            if i in big_at:
                gen.big_cycle()
            runner.step(i, gen.next())
            i += 1
        nsweep = runner.final_sweep()
        st = runner.stats
        # The test's own coverage: paging by byte budget must have been exercised.
        for k in ("scan_fwd_max", "scan_rev_max", "drain_max"):
            if st[k] < 4 * MIB:
                print(f"FAIL test_differential: coverage: largest {k} result was only {st[k]} bytes (< 4 MiB)", file=sys.stderr)
                return 1
        if hasattr(srv, "close"):
            srv.close()
        for r in refs.values():
            r.close()
    dt = time.monotonic() - t0
    print(
        f"ok test_differential: seed={seed} ops={i} sweep={nsweep} appends={sum(len(v) for v in runner.ords.by_shard.values())} "
        f"result_bytes={st['bytes'] / MIB:.1f}MiB max_scan_fwd={st['scan_fwd_max'] / MIB:.1f}MiB "
        f"max_scan_rev={st['scan_rev_max'] / MIB:.1f}MiB max_drain={st['drain_max'] / MIB:.1f}MiB "
        f"{'(SELFCHECK, no server) ' if selfcheck else ''}{dt:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
