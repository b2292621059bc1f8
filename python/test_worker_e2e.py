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
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from e2e_lib import (
    ALL,
    FUNCTION,
    CallLog,
    CheckFailed,
    Plan,
    PhaseRouter,
    PooledWorker,
    QueryResult,
    check_rows,
    check_sinks_routed,
    make_input,
    reference,
    report,
    single_plan,
    split_plan,
    worker_pid,
    worker_stderr_logger,
)

HERE = Path(__file__).resolve().parent
SCHEMA_PATH = ["main"]
# What worker_example.py writes, scoped by execution_id (used by the leftover checks).
NS_ROWS, NS_GROUPS, NS_META, NS_GROUP_ROWS = b"rows", b"groups", b"meta", b"group_rows"
BUFFERING_INIT_KEY = -1  # vgi.worker._TABLE_BUFFERING_INIT_KEY: the framework's init record


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

    check_rows(q, got, expected, k)
    routed = check_sinks_routed(q, log)
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

    stderr_logger, stderr_tail = worker_stderr_logger()

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


if __name__ == "__main__":
    sys.exit(main())
