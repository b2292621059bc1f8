#!/usr/bin/env python3
"""A small vgi-python worker whose state lives in vgi's shared FunctionStorage.

It hosts one table-buffering (Sink+Source) function, ``top_k_per_group``:

    SELECT * FROM top_k_per_group((SELECT grp, val, id, tag FROM t), k := 5)

Input columns ``grp`` (utf8), ``val`` (int64), ``id`` (int64), ``tag`` (utf8,
nullable). Output: for every group, in UTF-8 byte order of ``grp``, its ``k``
rows with the largest ``val`` (ties: smaller ``id`` first), numbered by
``rank`` 1..k. ``k`` larger than every group gives a full sort. ``id`` must be
unique (rows with equal grp, val and id would share a storage key, and the
finalize count check would then fail).

Nothing is kept in process memory between calls: every phase may run in a
different worker process, so all state goes through ``params.storage`` (a
vgi ``BoundStorage``, scoped to the query's ``execution_id``):

* sink (``process``, once per input batch, any process):
  ``state_put_many`` one row per input row into namespace ``rows``, under a
  key that sorts as (grp, val descending, id); ``state_put_many`` the group
  names into ``groups``; ``counter_add`` the row count per group and in total;
  ``state_append`` its state_id to the ``sinks`` log.
* combine (once, any process): ``state_log_scan`` the ``sinks`` log and
  ``counter_get`` the total, both checked against the state_ids it is given;
  ``state_drain`` the ``groups`` namespace -> one finalize stream per group.
* finalize (per group, any process, one page per tick): ``state_scan`` of the
  group's key range with a ``limit`` (the store's key order does the sort),
  then ``state_delete`` of the range, whose count must equal the group's
  counter (``counter_get``), and ``counter_delete``.

The framework adds its own calls around these (``state_put``/``state_get`` of
its init record, ``execution_clear`` in the destructor).

Storage comes only from the environment, read by vgi itself
(``vgi.function._resolve_storage``), so the same file runs on any backend:

    VGI_WORKER_SHARED_STORAGE=sqlite  [VGI_WORKER_SQLITE_PATH=/tmp/x.db]
    VGI_WORKER_SHARED_STORAGE=cloudflare-do  VGI_CF_DO_URL=http://127.0.0.1:PORT/python
                                             [VGI_CF_DO_TOKEN=...]

With cloudflare-do the caller must pass an ``attach_opaque_data`` of at least
16 bytes (its first 16 bytes name the shard); vgi refuses to build storage for
that backend without one.

Run: ``python worker_example.py`` serves vgi's RPC over stdin/stdout (what
``vgi.client.Client([sys.executable, "worker_example.py"])`` starts);
``python/test_worker_e2e.py`` drives it.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Annotated

import pyarrow as pa
from vgi_rpc import ArrowSerializableDataclass
from vgi_rpc.rpc import OutputCollector

from vgi.arguments import Arg, TableInput
from vgi.invocation import BindResponse
from vgi.table_buffering_function import TableBufferingFunction, TableBufferingParams
from vgi.table_function import BindParams
from vgi.worker import Worker

NS_ROWS = b"rows"  # key: grp \0 desc(val) asc(id)  value: val, id, tag
NS_GROUPS = b"groups"  # key: grp (utf-8)            value: b""
NS_META = b"meta"  # counter b"" = rows sunk; log b"sinks" = state_ids
NS_GROUP_ROWS = b"group_rows"  # counter per grp = rows sunk for that group

PAGE_ROWS = 200  # rows emitted per finalize tick

INPUT_TYPES = {"grp": pa.string(), "val": pa.int64(), "id": pa.int64(), "tag": pa.string()}
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("grp", pa.string()),
        pa.field("rank", pa.int64()),
        pa.field("val", pa.int64()),
        pa.field("id", pa.int64()),
        pa.field("tag", pa.string()),
    ]
)

_BIAS = 1 << 63
_U64_MAX = (1 << 64) - 1


def row_key(grp: bytes, val: int, row_id: int) -> bytes:
    """Key whose byte order is (grp, val descending, id ascending)."""
    return grp + b"\x00" + (_U64_MAX - (val + _BIAS)).to_bytes(8, "big") + (row_id + _BIAS).to_bytes(8, "big")


def group_range(grp: bytes) -> tuple[bytes, bytes]:
    """Half-open key range [start, end) holding exactly the rows of ``grp``."""
    return grp + b"\x00", grp + b"\x01"


def encode_row(val: int, row_id: int, tag: str | None) -> bytes:
    if tag is None:
        return struct.pack(">qqB", val, row_id, 0)
    return struct.pack(">qqB", val, row_id, 1) + tag.encode("utf-8")


def decode_row(value: bytes) -> tuple[int, int, str | None]:
    val, row_id, has_tag = struct.unpack_from(">qqB", value)
    return val, row_id, value[17:].decode("utf-8") if has_tag else None


@dataclass(slots=True, frozen=True, kw_only=True)
class TopKArgs:
    """Arguments of ``top_k_per_group``."""

    data: Annotated[TableInput, Arg(0, doc="Input table (grp, val, id, tag)")]
    k: Annotated[int, Arg("k", doc="Rows kept per group", default=5)] = 5


@dataclass
class PageCursor(ArrowSerializableDataclass):
    """Finalize state carried between ticks: where the next page starts."""

    after: bytes = b""
    emitted: int = 0


class TopKPerGroup(TableBufferingFunction[TopKArgs, PageCursor]):
    """Top-k rows per group by ``val`` (descending, ties by ``id``)."""

    class Meta:
        name = "top_k_per_group"
        description = "Top-k rows per group, sorted by val desc, id asc; state in FunctionStorage"

    @classmethod
    def on_bind(cls, params: BindParams[TopKArgs]) -> BindResponse:
        schema = params.bind_call.input_schema
        if schema is None:
            raise ValueError("top_k_per_group needs an input table")
        for name, typ in INPUT_TYPES.items():
            idx = schema.get_field_index(name)
            if idx < 0 or schema.field(idx).type != typ:
                raise ValueError(f"top_k_per_group: input needs column {name!r} of type {typ}; got {schema}")
        if params.args.k < 0:
            raise ValueError(f"top_k_per_group: k must be >= 0, got {params.args.k}")
        return BindResponse(output_schema=OUTPUT_SCHEMA)

    @classmethod
    def process(cls, batch: pa.RecordBatch, params: TableBufferingParams[TopKArgs]) -> bytes:
        cols = [batch.column(name).to_pylist() for name in ("grp", "val", "id", "tag")]
        rows: list[tuple[bytes, bytes]] = []
        per_group: Counter[bytes] = Counter()
        for grp, val, row_id, tag in zip(*cols, strict=True):
            if grp is None or val is None or row_id is None:
                raise ValueError("top_k_per_group: grp, val and id must not be NULL")
            g = grp.encode("utf-8")
            if b"\x00" in g:
                raise ValueError("top_k_per_group: grp must not contain NUL")
            rows.append((row_key(g, val, row_id), encode_row(val, row_id, tag)))
            per_group[g] += 1
        storage = params.storage
        storage.state_put_many(NS_ROWS, rows)
        storage.state_put_many(NS_GROUPS, [(g, b"") for g in sorted(per_group)])
        for g, n in sorted(per_group.items()):
            storage.counter_add(NS_GROUP_ROWS, g, n)
        storage.counter_add(NS_META, b"", len(rows))
        state_id = f"{os.getpid()}:{len(rows)}:{uuid.uuid4().hex}".encode()
        storage.state_append(NS_META, b"sinks", state_id)
        return state_id

    @classmethod
    def combine(cls, state_ids: list[bytes], params: TableBufferingParams[TopKArgs]) -> list[bytes]:
        storage = params.storage
        logged = [value for _, value in storage.state_log_scan(NS_META, b"sinks")]
        if Counter(logged) != Counter(state_ids):
            raise RuntimeError(f"combine: the sinks log holds {len(logged)} entries, {len(state_ids)} were returned")
        expected_rows = sum(int(sid.split(b":")[1]) for sid in state_ids)
        stored_rows = storage.counter_get(NS_META, b"")
        if stored_rows != expected_rows:
            raise RuntimeError(f"combine: row counter is {stored_rows}, the sinks reported {expected_rows}")
        return sorted(key for key, _ in storage.state_drain(NS_GROUPS))

    @classmethod
    def initial_finalize_state(cls, finalize_state_id: bytes, params: TableBufferingParams[TopKArgs]) -> PageCursor:
        return PageCursor(after=group_range(finalize_state_id)[0], emitted=0)

    @classmethod
    def finalize(
        cls,
        params: TableBufferingParams[TopKArgs],
        finalize_state_id: bytes,
        state: PageCursor,
        out: OutputCollector,
    ) -> None:
        storage = params.storage
        start, end = group_range(finalize_state_id)
        want = min(PAGE_ROWS, params.args.k - state.emitted)
        page = list(storage.state_scan(NS_ROWS, start=state.after, end=end, limit=want)) if want > 0 else []
        if not page:
            # Done with this group: drain what is left of it and check the count.
            expected = storage.counter_get(NS_GROUP_ROWS, finalize_state_id)
            deleted = storage.state_delete(NS_ROWS, start=start, end=end)
            if deleted != expected:
                raise RuntimeError(
                    f"finalize {finalize_state_id!r}: state_delete removed {deleted} rows, {expected} were sunk"
                )
            storage.counter_delete(NS_GROUP_ROWS, finalize_state_id)
            out.finish()
            return
        decoded = [decode_row(value) for _, value in page]
        grp = finalize_state_id.decode("utf-8")
        out.emit(
            pa.RecordBatch.from_pydict(
                {
                    "grp": [grp] * len(decoded),
                    "rank": list(range(state.emitted + 1, state.emitted + len(decoded) + 1)),
                    "val": [d[0] for d in decoded],
                    "id": [d[1] for d in decoded],
                    "tag": [d[2] for d in decoded],
                },
                schema=OUTPUT_SCHEMA,
            )
        )
        state.after = page[-1][0] + b"\x00"  # the smallest key after the last one read
        state.emitted += len(decoded)


class ExampleWorker(Worker):
    """Hosts ``top_k_per_group``."""

    functions = [TopKPerGroup]


if __name__ == "__main__":
    ExampleWorker.main()
