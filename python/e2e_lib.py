"""What the end-to-end drivers of a VGI worker pool share: the input and the reference answer of
``top_k_per_group``, and the routing that lands each RPC of one query in a chosen process.

``top_k_per_group`` is implemented twice, the same way: by ``worker_example.py`` (a vgi-python
worker, driven by ``test_worker_e2e.py``) and by the Rust example worker in
``compat/src/bin/silo-example-worker.rs`` (driven by ``test_rust_worker_e2e.py``).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

FUNCTION = "top_k_per_group"
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


def short(row: tuple[Any, ...]) -> str:
    return repr(tuple(v[:40] + "..." if isinstance(v, str) and len(v) > 40 else v for v in row))


# --------------------------------------------------------------------- main


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


def check_rows(q: str, got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]], k: int) -> None:
    """The output equals the reference row by row; the first difference is named."""
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            raise CheckFailed(
                f"{q}: output row {i} differs (k={k}, {len(got)} rows out, {len(expected)} expected)\n"
                f"  got:      {short(g)}\n  expected: {short(e)}"
            )
    if len(got) != len(expected):
        i = min(len(got), len(expected))
        extra = f"got extra row {short(got[i])}" if len(got) > i else f"missing row {short(expected[i])}"
        raise CheckFailed(f"{q}: {len(got)} rows out, {len(expected)} expected; first difference at row {i}: {extra}")


def check_sinks_routed(q: str, log: CallLog) -> list[int | None]:
    """Each process() ran in the pooled process its RPC was routed to; returns those pids."""
    routed = log.pids("process")
    if routed != log.sink_pids_reported:
        raise CheckFailed(f"{q}: process() ran in pids {log.sink_pids_reported}, the RPCs went to {routed}")
    return routed


def worker_stderr_logger() -> tuple[logging.Logger, deque[str]]:
    """A logger for a WorkerPool's piped worker stderr that keeps its last 40 lines."""
    tail: deque[str] = deque(maxlen=40)

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tail.append(record.getMessage())

    logger = logging.getLogger("e2e.worker_stderr")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(_Keep())
    return logger, tail
