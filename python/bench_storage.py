#!/usr/bin/env python3
"""vgi-python's storage from Python: its remote client against `silo serve` beside its own
local SQLite store, measured in one run. silo-bench's `python` section runs this with the
venv's python (python/.venv, made by python/venv.sh) and renders what it prints.

    bench_storage.py --url http://127.0.0.1:PORT/python --sqlite /tmp/x/vgi.db \
        [--reps 3] [--n 1000] [--batches 10] [--secs 1.5] [--procs 1,8] [--only single,batch,procs]

Subjects:
  silo       FunctionStorageCfDo(url=URL, token=None): vgi-python's remote client, as a worker
             pool configured with VGI_WORKER_SHARED_STORAGE=cloudflare-do uses it.
  sqlite     FunctionStorageSqlite(PATH): vgi-python's local store (WAL, synchronous=NORMAL).
  silo-lean  (single operations only, a reference) the same JSON requests to the same server
             from a minimal client on the standard library's http.client: what the round trip
             costs without httpx2.

Stages (subjects alternate, and swap order, every repetition):
  single  one client, per-op latency of state_put_many (1 item), state_get_many (1 key),
          state_append, queue_push (1 item), queue_pop, state_counter_add; 100 B values.
          For silo also where the time goes: the Python process's CPU per call, the server
          process's CPU per call (--server-pid: all its threads, from /proc) and the server's
          own time in its handlers (from its /metrics).
  batch   state_put_many and state_get_many of 1,000 items (100 B): items/s.
  procs   N OS processes (fork), each its own client and its own scope, a mixed loop
          (put, get, counter_add, append, push, pop) for --secs: aggregate ops/s.

Every result is checked (values read back, FIFO order, ordinals increasing, counter
values); a failed check is reported as an error record, never as a number.

Output: JSON Lines on stdout, one flat object per record:
  {"kind": "meta", ...}
  {"kind": "single", "subject", "op", "rep", "n", "p50_us", "p99_us", "mean_us", "client_cpu_us"
   [, "handler_us", "server_cpu_us"]}
  {"kind": "batch", "subject", "op", "rep", "items", "items_per_s"}
  {"kind": "procs", "subject", "procs", "rep", "ops", "secs", "ops_per_s"}
  {"kind": "error", "subject", "what", "error"}
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import glob
import http.client
import json
import multiprocessing
import os
import platform
import struct
import sys
import time
import traceback
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from importlib import metadata
from typing import Any

from vgi.function_storage import FunctionStorageSqlite
from vgi.function_storage_cf_do import FunctionStorageCfDo

SHARD = "silo-bench"
NS = b"bench"
SIZE = 100
BATCH = 1000
SUBJECTS = ("silo", "sqlite")
SINGLE_OPS = (
    "state_put_many",
    "state_get_many",
    "state_append",
    "queue_push",
    "queue_pop",
    "state_counter_add",
)


class Failed(Exception):
    """A result that did not check out."""


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def value(tag: int, i: int) -> bytes:
    """A self-describing 100-byte value for (tag, i)."""
    head = struct.pack("<QQ", tag, i)
    return head + bytes(((j * 7 + i * 13 + tag) & 0xFF) for j in range(16, SIZE))


def key(i: int) -> bytes:
    return struct.pack(">Q", i)


class LeanSilo:
    """The requests FunctionStorageCfDo sends (same JSON, base64, a uuid4 attempt_id on
    writes), from http.client on one keep-alive connection: a reference for the client's
    share of the latency. Only what the single-operation runs call."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self._path = u.path.rstrip("/")
        self._conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=30)

    def close(self) -> None:
        self._conn.close()

    def _post(self, endpoint: str, body: dict[str, Any], write: bool, shard_key: str) -> dict[str, Any]:
        body = {**body, "shard_key": shard_key or "loc-anon"}
        if write:
            body["attempt_id"] = uuid.uuid4().hex
        self._conn.request(
            "POST", f"{self._path}/{endpoint}", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        resp = self._conn.getresponse()
        data: dict[str, Any] = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{endpoint}: {resp.status} {data}")
        return data

    @staticmethod
    def _b(x: bytes) -> str:
        return base64.b64encode(x).decode()

    def state_put_many(self, scope: bytes, ns: bytes, items: list[tuple[bytes, bytes]], *, shard_key: str = "") -> None:
        body = {"scope_id": self._b(scope), "ns": self._b(ns)}
        body["items"] = [{"key": self._b(k), "value": self._b(v)} for k, v in items]  # type: ignore[assignment]
        self._post("state_put_many", body, True, shard_key)

    def state_get_many(self, scope: bytes, ns: bytes, keys: list[bytes], *, shard_key: str = "") -> list[bytes | None]:
        body = {"scope_id": self._b(scope), "ns": self._b(ns), "keys": [self._b(k) for k in keys]}
        rows = self._post("state_get_many", body, False, shard_key)["rows"]
        return [None if r is None else base64.b64decode(r["value"]) for r in rows]

    def state_append(self, scope: bytes, ns: bytes, k: bytes, item: bytes, *, shard_key: str = "") -> int:
        body = {"scope_id": self._b(scope), "ns": self._b(ns), "key": self._b(k), "item": self._b(item)}
        return int(self._post("state_append", body, True, shard_key)["ordinal"])

    def state_log_scan(self, scope: bytes, ns: bytes, k: bytes, *, shard_key: str = "") -> list[tuple[int, bytes]]:
        body = {"scope_id": self._b(scope), "ns": self._b(ns), "key": self._b(k), "after_id": -1}
        rows = self._post("state_log_scan", body, False, shard_key)["rows"]
        return [(int(r["id"]), base64.b64decode(r["value"])) for r in rows]

    def state_counter_add(self, scope: bytes, ns: bytes, k: bytes, delta: int, *, shard_key: str = "") -> int:
        body = {"scope_id": self._b(scope), "ns": self._b(ns), "key": self._b(k), "delta": delta}
        return int(self._post("state_counter_add", body, True, shard_key)["n"])

    def queue_push(self, eid: bytes, items: list[bytes], *, shard_key: str = "") -> int:
        body = {"execution_id": self._b(eid), "items": [self._b(i) for i in items]}
        return int(self._post("queue_push", body, True, shard_key)["count"])

    def queue_pop(self, eid: bytes, *, shard_key: str = "") -> bytes | None:
        item = self._post("queue_pop", {"execution_id": self._b(eid)}, True, shard_key)["item"]
        return base64.b64decode(item) if item else None

    def queue_clear(self, eid: bytes, *, shard_key: str = "") -> int:
        return int(self._post("queue_clear", {"execution_id": self._b(eid)}, True, shard_key)["cleared"])

    def execution_clear(self, scope: bytes, *, shard_key: str = "") -> int:
        return int(self._post("execution_clear", {"scope_id": self._b(scope)}, True, shard_key)["deleted"])


def open_subject(subject: str, args: argparse.Namespace) -> Any:
    if subject == "silo":
        return FunctionStorageCfDo(url=args.url, token=None)
    if subject == "silo-lean":
        return LeanSilo(args.url)
    return FunctionStorageSqlite(args.sqlite)


def close(store: Any) -> None:
    try:
        store.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


def server_time(args: argparse.Namespace) -> tuple[float, int]:
    """silo serve's /metrics: total seconds in request handlers and requests counted."""
    base = args.url.rstrip("/").removesuffix("/python")
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith("silo_request_duration_seconds_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("silo_request_duration_seconds_count{"):
            count += int(float(line.rsplit(" ", 1)[1]))
    return total, count


def process_cpu(pid: int) -> float:
    """Seconds on CPU of every thread of process `pid` (0 when unreadable)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def pct(sorted_ns: list[int], p: float) -> float:
    i = min(len(sorted_ns) - 1, round(p * (len(sorted_ns) - 1)))
    return sorted_ns[i] / 1000.0


# ------------------------------------------------------------------ single operations


def single_run(store: Any, op: str, n: int, tag: int, on_clock: Callable[[bool], None]) -> list[int]:
    """`n` calls of `op` on a fresh scope; per-call nanoseconds. Checked; scope dropped."""
    scope = f"single-{op}-{tag}-{os.getpid()}".encode()
    lat: list[int] = []
    clock = time.perf_counter_ns
    try:
        if op == "state_get_many":
            for b in range(0, n, BATCH):
                store.state_put_many(
                    scope, NS, [(key(i), value(tag, i)) for i in range(b, min(n, b + BATCH))], shard_key=SHARD
                )
        elif op == "queue_pop":
            for b in range(0, n, BATCH):
                store.queue_push(scope, [value(tag, i) for i in range(b, min(n, b + BATCH))], shard_key=SHARD)
        values = [value(tag, i) for i in range(n)]
        on_clock(True)
        last = -(2**63)
        for i in range(n):
            v = values[i]
            if op == "state_put_many":
                t0 = clock()
                store.state_put_many(scope, NS, [(key(i), v)], shard_key=SHARD)
                lat.append(clock() - t0)
            elif op == "state_get_many":
                t0 = clock()
                got = store.state_get_many(scope, NS, [key(i)], shard_key=SHARD)
                lat.append(clock() - t0)
                if got != [v]:
                    raise Failed(f"state_get_many: key {i} read back {got!r:.60}")
            elif op == "state_append":
                t0 = clock()
                ordinal = store.state_append(scope, NS, b"log", v, shard_key=SHARD)
                lat.append(clock() - t0)
                if ordinal <= last:
                    raise Failed(f"state_append: ordinal {ordinal} after {last}")
                last = ordinal
            elif op == "queue_push":
                t0 = clock()
                count = store.queue_push(scope, [v], shard_key=SHARD)
                lat.append(clock() - t0)
                if count != 1:
                    raise Failed(f"queue_push: answered {count} for one item")
            elif op == "queue_pop":
                t0 = clock()
                got = store.queue_pop(scope, shard_key=SHARD)
                lat.append(clock() - t0)
                if got != v:
                    raise Failed(f"queue_pop: item {i} popped wrong or out of order")
            elif op == "state_counter_add":
                t0 = clock()
                total = store.state_counter_add(scope, NS, b"c", 1, shard_key=SHARD)
                lat.append(clock() - t0)
                if total != i + 1:
                    raise Failed(f"state_counter_add: {total} after {i + 1} adds")
            else:
                raise Failed(f"unknown op {op}")
        on_clock(False)
        # Checked off the clock.
        if op == "state_put_many":
            sample = list(range(0, n, 37)) + [n - 1]
            got = store.state_get_many(scope, NS, [key(i) for i in sample], shard_key=SHARD)
            if got != [value(tag, i) for i in sample]:
                raise Failed("state_put_many: a put was lost or torn")
        elif op == "state_append":
            rows = store.state_log_scan(scope, NS, b"log", shard_key=SHARD)
            if [v for _, v in rows] != [value(tag, i) for i in range(n)]:
                raise Failed(f"state_append: the log holds {len(rows)} entries, not the {n} appended")
        elif op == "queue_push":
            for i in range(n):
                if store.queue_pop(scope, shard_key=SHARD) != value(tag, i):
                    raise Failed(f"queue_push: item {i} missing or out of order")
            if store.queue_pop(scope, shard_key=SHARD) is not None:
                raise Failed("queue_push: more items than pushed")
        elif op == "queue_pop":
            if store.queue_pop(scope, shard_key=SHARD) is not None:
                raise Failed("queue_pop: more items than pushed")
    finally:
        store.execution_clear(scope, shard_key=SHARD)
        store.queue_clear(scope, shard_key=SHARD)
    return lat


def warm_up(store: Any) -> None:
    """A few of every call first: connections opened, statements cached, code paths hot."""
    for op in SINGLE_OPS:
        single_run(store, op, 20, 999_999, lambda _: None)


def stage_single(args: argparse.Namespace) -> None:
    subjects = (*SUBJECTS, "silo-lean")
    stores = {s: open_subject(s, args) for s in subjects}
    try:
        for s, store in stores.items():
            warm_up(store)
        for rep in range(args.reps):
            order = subjects if rep % 2 == 0 else subjects[::-1]
            for op in SINGLE_OPS:
                for subject in order:
                    marks: list[tuple[float, float, float, int]] = []
                    remote = subject != "sqlite"

                    def on_clock(start: bool, remote: bool = remote, marks: list = marks) -> None:
                        # The /metrics reads stay outside the CPU readings.
                        def cpu() -> tuple[float, float]:
                            server = process_cpu(args.server_pid) if args.server_pid else 0.0
                            return time.process_time(), server

                        if start:
                            handler, count = server_time(args) if remote else (0.0, 0)
                            marks.append((*cpu(), handler, count))
                        else:
                            c = cpu()
                            handler, count = server_time(args) if remote else (0.0, 0)
                            marks.append((*c, handler, count))

                    try:
                        lat = single_run(stores[subject], op, args.n, rep * 10 + 1, on_clock)
                    except Exception as e:  # noqa: BLE001 - reported
                        emit({"kind": "error", "subject": subject, "what": f"single {op}", "error": describe(e)})
                        continue
                    lat.sort()
                    n = len(lat)
                    record = {
                        "kind": "single",
                        "subject": subject,
                        "op": op,
                        "rep": rep,
                        "n": n,
                        "p50_us": pct(lat, 0.5),
                        "p99_us": pct(lat, 0.99),
                        "mean_us": sum(lat) / n / 1000.0,
                    }
                    if len(marks) == 2:
                        (c0, s0, h0, k0), (c1, s1, h1, k1) = marks
                        record["client_cpu_us"] = (c1 - c0) / n * 1e6
                        if remote and k1 > k0:
                            record["handler_us"] = (h1 - h0) / (k1 - k0) * 1e6
                        if remote and args.server_pid:
                            record["server_cpu_us"] = (s1 - s0) / n * 1e6
                    emit(record)
                    log(f"python single {subject:>9} {op:<18} rep {rep}: p50 {record['p50_us']:.0f} µs")
    finally:
        for store in stores.values():
            close(store)


# ------------------------------------------------------------------ batches


def batch_run(store: Any, batches: int, tag: int) -> tuple[float, float]:
    """`batches` state_put_many of 1,000 items, then state_get_many of the same keys, on a
    fresh scope: items/s of each. Every value read back is checked."""
    scope = f"batch-{tag}-{os.getpid()}".encode()
    try:
        payload = [[(key(b * BATCH + i), value(tag, b * BATCH + i)) for i in range(BATCH)] for b in range(batches)]
        keys = [[k for k, _ in items] for items in payload]
        t0 = time.perf_counter()
        for items in payload:
            store.state_put_many(scope, NS, items, shard_key=SHARD)
        put = batches * BATCH / (time.perf_counter() - t0)
        got_all = []
        t0 = time.perf_counter()
        for ks in keys:
            got_all.append(store.state_get_many(scope, NS, ks, shard_key=SHARD))
        get = batches * BATCH / (time.perf_counter() - t0)
        for items, got in zip(payload, got_all, strict=True):
            if got != [v for _, v in items]:
                raise Failed("state_get_many of 1,000: values missing or wrong")
        return put, get
    finally:
        store.execution_clear(scope, shard_key=SHARD)


def stage_batch(args: argparse.Namespace) -> None:
    stores = {s: open_subject(s, args) for s in SUBJECTS}
    try:
        for store in stores.values():
            batch_run(store, 2, 999_998)
        for rep in range(args.reps):
            order = SUBJECTS if rep % 2 == 0 else SUBJECTS[::-1]
            for subject in order:
                try:
                    put, get = batch_run(stores[subject], args.batches, rep * 10 + 2)
                except Exception as e:  # noqa: BLE001 - reported
                    emit({"kind": "error", "subject": subject, "what": "batch", "error": describe(e)})
                    continue
                for op, rate in (("state_put_many", put), ("state_get_many", get)):
                    emit(
                        {
                            "kind": "batch",
                            "subject": subject,
                            "op": op,
                            "rep": rep,
                            "items": args.batches * BATCH,
                            "items_per_s": rate,
                        }
                    )
                log(f"python batch  {subject:>6} rep {rep}: put {put:,.0f} get {get:,.0f} items/s")
    finally:
        for store in stores.values():
            close(store)


# ------------------------------------------------------------------ processes


def child(
    subject: str,
    args: argparse.Namespace,
    index: int,
    tag: int,
    ready: Any,
    go: Any,
    start_at: Any,
    results: Any,
) -> None:
    """One client process: its own client, its own scope; a mixed loop until the deadline."""
    out: dict[str, Any] = {"ops": 0, "end": 0.0, "error": None}
    store = None
    scope = f"procs-{tag}-{index}-{os.getpid()}".encode()
    try:
        store = open_subject(subject, args)
        ops = 0
        cycle = 0

        def one_cycle(i: int) -> None:
            v = value(index, i)
            store.state_put_many(scope, NS, [(key(i), v)], shard_key=SHARD)
            if store.state_get_many(scope, NS, [key(i)], shard_key=SHARD) != [v]:
                raise Failed(f"process {index}: key {i} read back wrong")
            if store.state_counter_add(scope, NS, b"c", 1, shard_key=SHARD) != i + 1:
                raise Failed(f"process {index}: counter wrong after {i + 1} adds")
            store.state_append(scope, NS, b"log", v, shard_key=SHARD)
            store.queue_push(scope, [v], shard_key=SHARD)
            if store.queue_pop(scope, shard_key=SHARD) != v:
                raise Failed(f"process {index}: popped a different item than pushed")

        # Warm: connection open, statements prepared; not counted.
        one_cycle(cycle)
        cycle += 1
        ready.put(index)
        go.wait()
        start = start_at.value
        while time.monotonic() < start:
            time.sleep(0.0005)
        deadline = start + args.secs
        while time.monotonic() < deadline:
            one_cycle(cycle)
            cycle += 1
            ops += 6
        out["end"] = time.monotonic()
        out["ops"] = ops
        rows = store.state_log_scan(scope, NS, b"log", shard_key=SHARD)
        ordinals = [o for o, _ in rows]
        if len(rows) != cycle or ordinals != sorted(set(ordinals)):
            raise Failed(f"process {index}: the log holds {len(rows)} of {cycle} appends, or out of order")
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out["error"] = describe(e)
        try:
            ready.put(index)
        except Exception:  # noqa: BLE001
            pass
    finally:
        if store is not None:
            try:
                store.execution_clear(scope, shard_key=SHARD)
                store.queue_clear(scope, shard_key=SHARD)
            except Exception:  # noqa: BLE001
                pass
            close(store)
        results.put(out)


def procs_run(subject: str, args: argparse.Namespace, procs: int, tag: int) -> tuple[int, float]:
    """`procs` processes for `args.secs`: (ops, seconds from the common start to the last end)."""
    ctx = multiprocessing.get_context("fork")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    workers = [
        ctx.Process(target=child, args=(subject, args, i, tag, ready, go, start_at, results)) for i in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in range(procs):
        ready.get(timeout=60)
    start = time.monotonic() + 0.05
    start_at.value = start
    go.set()
    outs = [results.get(timeout=args.secs + 120) for _ in range(procs)]
    for w in workers:
        w.join(timeout=30)
    errors = [o["error"] for o in outs if o["error"]]
    if errors:
        raise Failed("; ".join(errors[:3]))
    ops = sum(o["ops"] for o in outs)
    return ops, max(o["end"] for o in outs) - start


def stage_procs(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.procs.split(",")]
    for rep in range(args.reps):
        order = SUBJECTS if rep % 2 == 0 else SUBJECTS[::-1]
        for procs in counts:
            for subject in order:
                try:
                    ops, secs = procs_run(subject, args, procs, rep * 100 + procs)
                except Exception as e:  # noqa: BLE001 - reported
                    emit({"kind": "error", "subject": subject, "what": f"{procs} processes", "error": describe(e)})
                    continue
                rate = ops / secs
                emit(
                    {
                        "kind": "procs",
                        "subject": subject,
                        "procs": procs,
                        "rep": rep,
                        "ops": ops,
                        "secs": secs,
                        "ops_per_s": rate,
                    }
                )
                log(f"python procs  {subject:>6} {procs} processes rep {rep}: {rate:,.0f} ops/s")


# ------------------------------------------------------------------ main


def describe(e: BaseException) -> str:
    if isinstance(e, Failed):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="silo serve's /python base URL")
    p.add_argument("--sqlite", required=True, help="file for vgi-python's FunctionStorageSqlite")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=1000, help="calls per single-op run")
    p.add_argument("--batches", type=int, default=10, help="batches of 1,000 per batch run")
    p.add_argument("--secs", type=float, default=1.5, help="seconds per processes run")
    p.add_argument("--procs", default="1,8", help="process counts, comma-separated")
    p.add_argument("--only", default="single,batch,procs", help="stages, comma-separated")
    p.add_argument("--server-pid", type=int, default=0, help="the server's process, for its CPU time")
    args = p.parse_args()
    stages = set(args.only.split(","))
    emit(
        {
            "kind": "meta",
            "python": platform.python_version(),
            "vgi_python": metadata.version("vgi-python"),
            "httpx2": metadata.version("httpx2"),
            "sqlite": __import__("sqlite3").sqlite_version,
            "cores": os.cpu_count() or 0,
        }
    )
    if "single" in stages:
        stage_single(args)
    if "batch" in stages:
        stage_batch(args)
    if "procs" in stages:
        stage_procs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
