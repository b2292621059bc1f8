#!/usr/bin/env python3
"""End-to-end: a pool of vgi-python worker processes keeping their shared state in one store.

Starts ``worker_example.py`` (one table-buffering function, ``top_k_per_group``)
as a pool of worker processes with ``vgi.client.Client`` over a
``vgi_rpc.WorkerPool``, runs several queries on seeded input (several record
batches, a few thousand rows each) and checks every output row against a
reference computed here in plain Python.

Whichever store ``VGI_WORKER_SHARED_STORAGE`` names is used, e.g.

    VGI_WORKER_SHARED_STORAGE=sqlite  (default; a temp db unless VGI_WORKER_SQLITE_PATH is set)
    VGI_WORKER_SHARED_STORAGE=cloudflare-do  VGI_CF_DO_URL=http://127.0.0.1:PORT/python  [VGI_CF_DO_TOKEN=...]

    python/.venv/bin/python python/test_worker_e2e.py [--workers 4] [--rows 4000] [--seed N]

The worker processes inherit these variables from this process (the pool
spawns them with this process's environment); vgi resolves the store in each
worker from them. In vgi-python 0.47.0 the client side never resolves a store
(the driver checks that), so setting the variables here is harmless to it;
this driver then opens the same store itself, on purpose, to look inside.

Why the phases land in different processes: in 0.47.0
``Client.table_buffering_function`` sends every RPC of a query (bind, sink
init, process per batch, combine, finalize streams, destructor) over its one
primary connection, so a pool alone never splits a query. DuckDB's operator
does split them, and that is what the shared store is for, so this driver
hands the client a stand-in proxy that routes each RPC of the client's own
call sequence to a chosen pooled process: the sink init on one, the process
calls round-robin over all, combine on another, the finalize streams on yet
others. One query runs unsplit (the client's plain behaviour); with >= 4
workers, two split queries also run at once on disjoint processes.

Checked, per query:
  * output == reference, row by row (the first differing row is printed);
  * mid-query (after the first output batch) this process, opening the store
    from the same environment, sees the sink's state: the framework's init
    record and the row counter -- so the workers really used that store;
  * the pid inside each state_id (written by the process that ran process())
    equals the pid of the pooled process the RPC was routed to;
  * after the destructor nothing of the query is left in the store
    (vgi's destructor swallows storage errors, so this is checked here).
Once: the pooled processes are distinct, the client process never resolved a
store, and for sqlite the database holds no rows at all at the end.

Exit status 0 only when every check passed; one summary line at the end.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import logging
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

HERE = Path(__file__).resolve().parent
FUNCTION = "top_k_per_group"
SCHEMA_PATH = ["main"]
ALL = 10**9  # k larger than any group: a full sort

INPUT_SCHEMA = pa.schema(
    [
        pa.field("grp", pa.string()),
        pa.field("val", pa.int64()),
        pa.field("id", pa.int64()),
        pa.field("tag", pa.string()),
    ]
)
# Group names chosen so that byte order matters: a prefix of another ("a",
# "ab", "a b"), upper before lower case, multi-byte UTF-8, very skewed sizes.
GROUPS = ["alpha", "beta", "Zeta", "a", "ab", "a b", "grüne", "émile", "日本", "x" * 40, "~", "solo"]
GROUP_WEIGHTS = [30, 20, 12, 8, 8, 4, 6, 5, 4, 2, 1, 0.05]
TAG_CHARS = "abcdefXYZ0123 _-'\"\\/%.,:;ßøé€中😀\t"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

# What worker_example.py writes, scoped by execution_id (used by the leftover checks).
NS_ROWS, NS_GROUPS, NS_META, NS_GROUP_ROWS = b"rows", b"groups", b"meta", b"group_rows"
BUFFERING_INIT_KEY = -1  # vgi.worker._TABLE_BUFFERING_INIT_KEY: the framework's init record


class CheckFailed(Exception):
    """A check did not hold; the message says which and how."""


# --------------------------------------------------------------------- data


def make_input(seed: int, n_rows: int) -> list[pa.RecordBatch]:
    """Deterministic input: unique ids, many tied vals, a few int64 extremes, odd tags."""
    rng = random.Random(seed)
    ids = rng.sample(range(-(10**12), 10**12), n_rows)
    grp, val, tag = [], [], []
    for _ in range(n_rows):
        grp.append(rng.choices(GROUPS, GROUP_WEIGHTS)[0])
        r = rng.random()
        val.append(INT64_MIN if r < 0.005 else INT64_MAX if r < 0.01 else rng.randint(-60, 60))
        r = rng.random()
        if r < 0.1:
            tag.append(None)
        elif r < 0.12:
            tag.append("".join(rng.choices(TAG_CHARS, k=rng.randint(1000, 4000))))
        else:
            tag.append("".join(rng.choices(TAG_CHARS, k=rng.randint(0, 24))))
    # Uneven batches, one of them a single row.
    cuts = sorted(rng.sample(range(2, n_rows), 5)) + [1]
    bounds = [0, *sorted(set(cuts)), n_rows]
    table = pa.table({"grp": grp, "val": val, "id": ids, "tag": tag}, schema=INPUT_SCHEMA)
    return [table.slice(a, b - a).combine_chunks().to_batches()[0] for a, b in itertools.pairwise(bounds) if b > a]


def reference(batches: list[pa.RecordBatch], k: int) -> list[tuple[Any, ...]]:
    """What top_k_per_group must return, computed without vgi."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        for row in batch.to_pylist():
            by_group.setdefault(row["grp"], []).append(row)
    out = []
    for grp in sorted(by_group, key=lambda g: g.encode("utf-8")):
        ranked = sorted(by_group[grp], key=lambda r: (-r["val"], r["id"]))[:k]
        out.extend((grp, rank, r["val"], r["id"], r["tag"]) for rank, r in enumerate(ranked, 1))
    return out


# ------------------------------------------------------------------ routing


@dataclass
class PooledWorker:
    """One started Client, i.e. one pooled worker process."""

    client: Any
    proxy: Any  # the client's own RPC proxy for that process, kept aside while a router stands in
    pid: int | None


@dataclass
class Plan:
    """Which worker (index into the query's worker list) serves each RPC."""

    name: str
    bind: int
    process: list[int]  # round-robin over batches
    combine: int
    finalize: list[int]  # round-robin over finalize streams (one per group)
    destructor: int


@dataclass
class CallLog:
    calls: list[tuple[str, int | None]] = field(default_factory=list)  # (phase, pid)
    execution_id: bytes | None = None
    sink_pids_reported: list[int] = field(default_factory=list)  # pid inside each state_id

    def pids(self, phase: str) -> list[int | None]:
        return [pid for p, pid in self.calls if p == phase]


class PhaseRouter:
    """Stands in for a Client's proxy: each RPC of one query goes to the worker the plan names."""

    def __init__(self, workers: list[PooledWorker], plan: Plan, log: CallLog) -> None:
        self._workers, self._plan, self._log = workers, plan, log
        self._n_finalize = 0

    def _to(self, phase: str, idx: int) -> Any:
        worker = self._workers[idx]
        self._log.calls.append((phase, worker.pid))
        return worker.proxy

    def bind(self, *, request: Any) -> Any:
        return self._to("bind", self._plan.bind).bind(request=request)

    def init(self, *, request: Any) -> Any:
        from vgi.table_function import TableInOutFunctionInitPhase as Phase

        if request.phase == Phase.TABLE_BUFFERING:
            return self._to("sink_init", self._plan.bind).init(request=request)
        if request.phase == Phase.TABLE_BUFFERING_FINALIZE:
            idx = self._plan.finalize[self._n_finalize % len(self._plan.finalize)]
            self._n_finalize += 1
            return self._to("finalize", idx).init(request=request)
        raise CheckFailed(f"unexpected init phase {request.phase} in a table-buffering query")

    def table_buffering_process(self, *, request: Any) -> Any:
        self._log.execution_id = request.execution_id
        idx = self._plan.process[(request.batch_index or 0) % len(self._plan.process)]
        response = self._to("process", idx).table_buffering_process(request=request)
        self._log.sink_pids_reported.append(int(response.state_id.split(b":")[0]))
        return response

    def table_buffering_combine(self, *, request: Any) -> Any:
        self._log.execution_id = request.execution_id
        return self._to("combine", self._plan.combine).table_buffering_combine(request=request)

    def table_buffering_destructor(self, *, request: Any) -> Any:
        return self._to("destructor", self._plan.destructor).table_buffering_destructor(request=request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._workers[self._plan.bind].proxy, name)


def single_plan() -> Plan:
    return Plan("single", bind=0, process=[0], combine=0, finalize=[0], destructor=0)


def split_plan(n: int, shift: int) -> Plan:
    """Sink init on one process, process calls over all, combine and finalize elsewhere."""
    r = [(shift + i) % n for i in range(n)]
    return Plan(
        "split",
        bind=r[0],
        process=r[1:] + r[:1],
        combine=r[1 % n],
        finalize=(r[1:] + r[:1])[::-1],
        destructor=r[-1],
    )


def worker_pid(client: Any) -> int | None:
    """Pid of a pooled Client's process (reads vgi_rpc internals; None if they moved)."""
    try:
        return int(client._primary.proxy._transport.proc.pid)
    except Exception:
        return None


# ------------------------------------------------------------------ storage


def open_store() -> Any:
    """The store the workers use, resolved from this process's environment by vgi itself."""
    from vgi.function import Function

    return Function.storage


def client_resolved_store() -> bool:
    from vgi.function import Function

    return Function.__dict__["storage"]._resolved is not None


def bound(execution_id: bytes, attach: bytes) -> Any:
    from vgi.function_storage import BoundStorage

    return BoundStorage(open_store(), execution_id, attach_plaintext=attach)


def check_mid_query(q: str, execution_id: bytes, attach: bytes, n_rows: int) -> None:
    from vgi.function_storage import BoundStorage, FrameworkNS

    st = bound(execution_id, attach)
    if st.state_get(FrameworkNS.BUFFERING_INIT, BoundStorage.pack_int_key(BUFFERING_INIT_KEY)) is None:
        raise CheckFailed(f"{q}: mid-query, the store this process opens holds no init record for the query")
    seen = st.counter_get(NS_META, b"")
    if seen != n_rows:
        raise CheckFailed(f"{q}: mid-query, the row counter in the store is {seen}, expected {n_rows}")


def check_nothing_left(q: str, execution_id: bytes, attach: bytes) -> None:
    from vgi.function_storage import BoundStorage, FrameworkNS

    st = bound(execution_id, attach)
    left = []
    if st.state_get(FrameworkNS.BUFFERING_INIT, BoundStorage.pack_int_key(BUFFERING_INIT_KEY)) is not None:
        left.append("framework init record")
    for ns in (NS_ROWS, NS_GROUPS):
        if list(st.state_scan(ns, limit=1)):
            left.append(f"state in {ns!r}")
    if st.state_log_scan(NS_META, b"sinks", limit=1):
        left.append("sinks log")
    if st.counter_get(NS_META, b"") != 0:
        left.append("row counter")
    if left:
        raise CheckFailed(f"{q}: after the destructor the store still holds: {', '.join(left)}")


def sqlite_rows_left(db_path: str) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    try:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        tables = [r[0] for r in conn.execute(sql)]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608
    finally:
        conn.close()
    return {t: n for t, n in counts.items() if n}


# -------------------------------------------------------------------- query


@dataclass
class QueryResult:
    name: str
    rows_in: int
    batches_in: int
    rows_out: int
    sink_pids: set[int | None]  # sink init + every process() call
    finalize_pids: set[int | None]  # every finalize stream
    combine_pid: int | None

    @property
    def crossed(self) -> bool:
        """Some finalize stream ran in a process other than one that sank rows it read."""
        return any(s != f for s in self.sink_pids for f in self.finalize_pids)


# Whether the client process had resolved a store by the time of the first
# mid-query check (i.e. through bind, sink init, process, combine and the first
# finalize tick) -- before this driver opens the store itself.
CLIENT_RESOLVED_STORE: list[bool] = []


def run_query(
    q: str, workers: list[PooledWorker], plan: Plan, attach: bytes, seed: int, n_rows: int, k: int
) -> QueryResult:
    from vgi.arguments import Arguments

    batches = make_input(seed, n_rows)
    expected = reference(batches, k)
    log = CallLog()
    primary = workers[plan.bind]
    primary.client._primary.proxy = PhaseRouter(workers, plan, log)
    got: list[tuple[Any, ...]] = []
    try:
        results = primary.client.table_buffering_function(
            function_name=FUNCTION,
            schema_path=SCHEMA_PATH,
            input=iter(batches),
            arguments=Arguments(named={"k": pa.scalar(k, pa.int64())}),
        )
        for i, batch in enumerate(results):
            if batch.schema.names != ["grp", "rank", "val", "id", "tag"]:
                raise CheckFailed(f"{q}: output schema {batch.schema}")
            if i == 0:
                assert log.execution_id is not None
                if not CLIENT_RESOLVED_STORE:
                    CLIENT_RESOLVED_STORE.append(client_resolved_store())
                check_mid_query(q, log.execution_id, attach, n_rows)
            got.extend(tuple(r.values()) for r in batch.to_pylist())
    finally:
        primary.client._primary.proxy = primary.proxy

    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            raise CheckFailed(
                f"{q}: output row {i} differs (k={k}, {len(got)} rows out, {len(expected)} expected)\n"
                f"  got:      {_short(g)}\n  expected: {_short(e)}"
            )
    if len(got) != len(expected):
        i = min(len(got), len(expected))
        extra = f"got extra row {_short(got[i])}" if len(got) > i else f"missing row {_short(expected[i])}"
        raise CheckFailed(f"{q}: {len(got)} rows out, {len(expected)} expected; first difference at row {i}: {extra}")

    routed = log.pids("process")
    if routed != log.sink_pids_reported:
        raise CheckFailed(f"{q}: process() ran in pids {log.sink_pids_reported}, the RPCs went to {routed}")
    assert log.execution_id is not None
    check_nothing_left(q, log.execution_id, attach)

    combine = log.pids("combine")
    return QueryResult(
        name=q,
        rows_in=n_rows,
        batches_in=len(batches),
        rows_out=len(got),
        sink_pids=set(log.pids("sink_init")) | set(routed),
        finalize_pids=set(log.pids("finalize")),
        combine_pid=combine[0] if combine else None,
    )


def _short(row: tuple[Any, ...]) -> str:
    return repr(tuple(v[:40] + "..." if isinstance(v, str) and len(v) > 40 else v for v in row))


# --------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4, help="pooled processes (>= 2; >= 4 adds a concurrent round)")
    ap.add_argument("--rows", type=int, default=4000, help="input rows per query")
    ap.add_argument("--seed", type=int, default=20260507)
    ap.add_argument("--worker", default=str(HERE / "worker_example.py"), help="worker script to start")
    ap.add_argument("--timeout", type=float, default=55.0, help="abort (exit 1) after this many seconds")
    ap.add_argument("--verbose", action="store_true", help="pass the workers' stderr through")
    args = ap.parse_args()
    if args.workers < 2:
        ap.error("--workers must be >= 2")
    if args.rows < 10:
        ap.error("--rows must be >= 10")
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    t0 = time.monotonic()

    # Storage settings: the worker processes inherit them from this environment.
    storage = os.environ.setdefault("VGI_WORKER_SHARED_STORAGE", "sqlite").lower()
    tmp_dir = None
    if storage == "sqlite" and not os.environ.get("VGI_WORKER_SQLITE_PATH"):
        tmp_dir = tempfile.mkdtemp(prefix="silo-e2e-")
        os.environ["VGI_WORKER_SQLITE_PATH"] = os.path.join(tmp_dir, "state.db")
    if storage == "cloudflare-do" and not os.environ.get("VGI_CF_DO_URL"):
        print("FAIL: VGI_WORKER_SHARED_STORAGE=cloudflare-do needs VGI_CF_DO_URL", file=sys.stderr)
        return 2
    if storage == "memory":
        print("FAIL: the 'memory' store is private to each process; a pool cannot share it", file=sys.stderr)
        return 2
    token = "set" if os.environ.get("VGI_CF_DO_TOKEN") else "unset"
    where = {
        "sqlite": f"path={os.environ.get('VGI_WORKER_SQLITE_PATH')}",
        "cloudflare-do": f"url={os.environ.get('VGI_CF_DO_URL')} token={token}",
    }.get(storage, "")
    print(f"storage={storage} {where}; worker={args.worker}; {args.workers} pooled processes; seed={args.seed}")

    # Workers' stderr: kept (last lines printed on failure) unless --verbose.
    from vgi_rpc import StderrMode, WorkerPool

    stderr_tail: deque[str] = deque(maxlen=40)

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stderr_tail.append(record.getMessage())

    stderr_logger = logging.getLogger("e2e.worker_stderr")
    stderr_logger.propagate = False
    stderr_logger.setLevel(logging.INFO)
    stderr_logger.addHandler(_Keep())

    from vgi.client import Client

    pool = WorkerPool(
        max_idle=args.workers,
        idle_timeout=300.0,
        stderr=StderrMode.INHERIT if args.verbose else StderrMode.PIPE,
        stderr_logger=stderr_logger,
    )
    # One attach for the run: with cloudflare-do its first 16 bytes name the shard.
    attach = uuid.uuid4().bytes + b"silo-e2e"
    workers: list[PooledWorker] = []
    results: list[QueryResult] = []
    status = 1
    try:
        for _ in range(args.workers):
            client = Client([sys.executable, args.worker], pool=pool, attach_opaque_data=attach)
            client.start()  # borrows a pooled process; the others are busy, so each is a new one
            workers.append(PooledWorker(client, client._primary.proxy, worker_pid(client)))
        pids = [w.pid for w in workers]
        if None not in pids and len(set(pids)) != len(pids):
            raise CheckFailed(f"pooled clients share processes: pids {pids}")
        print(f"worker pids: {pids}  (started in {time.monotonic() - t0:.1f} s)")

        n = args.workers
        queries = [
            ("q1", single_plan(), 5),
            ("q2", split_plan(n, 0), 3),
            ("q3", split_plan(n, 1), ALL),
            ("q4", split_plan(n, 2), 40),
        ]
        for i, (q, plan, k) in enumerate(queries):
            res = run_query(q, workers, plan, attach, args.seed + i, args.rows, k)
            results.append(res)
            report(res, plan, k)

        if n >= 4:
            # Two split queries at once, each on its own pair of processes.
            half = n // 2
            groups = [workers[:half], workers[half:]]
            conc = [("q5", ALL), ("q6", 7)]
            errors: list[BaseException] = []
            done: list[tuple[QueryResult, Plan, int]] = []

            def run(j: int) -> None:
                q, k = conc[j]
                plan = split_plan(len(groups[j]), 0)
                try:
                    done.append((run_query(q, groups[j], plan, attach, args.seed + 10 + j, args.rows, k), plan, k))
                except BaseException as e:  # noqa: BLE001 -- reported below
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(j,)) for j in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for res, plan, k in sorted(done, key=lambda d: d[0].name):
                results.append(res)
                report(res, plan, k, note="concurrent")
            if errors:
                raise errors[0]
        else:
            print("(fewer than 4 workers: no concurrent round)")

        if CLIENT_RESOLVED_STORE and CLIENT_RESOLVED_STORE[0]:
            raise CheckFailed("the client process resolved a store by itself while running a query")
        if tmp_dir is not None:  # a database of our own: it must be empty again
            left = sqlite_rows_left(os.environ["VGI_WORKER_SQLITE_PATH"])
            if left:
                raise CheckFailed(f"rows left in the sqlite store after all queries: {left}")
        status = 0
    except CheckFailed as e:
        print(f"FAIL: {e}")
    except Exception as e:  # noqa: BLE001 -- any error is a failed run
        print(f"FAIL: {type(e).__name__}: {e}")
        if args.verbose:
            traceback.print_exc()
        if stderr_tail:
            print("--- last worker stderr lines ---", file=sys.stderr)
            print("\n".join(stderr_tail), file=sys.stderr)
    finally:
        for w in workers:
            try:
                w.client.stop()
            except Exception:  # noqa: BLE001
                pass
        pool.close()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        faulthandler.cancel_dump_traceback_later()

    elapsed = time.monotonic() - t0
    crossed = [r for r in results if r.crossed]
    rows = sum(r.rows_out for r in results)
    verdict = "PASS" if status == 0 else "FAIL"
    print(
        f"{verdict}: {len(results)} queries ok, {rows} output rows checked row by row, "
        f"{args.workers} worker processes, sink and finalize in different processes in "
        f"{len(crossed)}/{len(results)} queries, storage={storage}, {elapsed:.1f} s"
    )
    return status


def report(res: QueryResult, plan: Plan, k: int, note: str = "") -> None:
    fmt = lambda s: "{" + ",".join(str(p) for p in sorted(s, key=str)) + "}"  # noqa: E731
    kk = "all" if k >= ALL else str(k)
    print(
        f"{res.name} {plan.name:6} k={kk:<4} {res.rows_in} rows in {res.batches_in} batches -> "
        f"{res.rows_out:4} rows out ok | sink {fmt(res.sink_pids)} "
        f"combine {res.combine_pid} finalize {fmt(res.finalize_pids)} | "
        f"sink/finalize in different processes: {'yes' if res.crossed else 'no'}"
        + (f" ({note})" if note else "")
    )


if __name__ == "__main__":
    sys.exit(main())
