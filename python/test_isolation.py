#!/usr/bin/env python3
"""Isolation test: tenants (tokens) and shard keys never see each other's data; bad tokens are refused.

Uses vgi-python's own client (FunctionStorageCfDo) against the server's /python
endpoints with two tenants' tokens.

Checks:
  1. tenant B, using the same scope ids / execution ids / shard keys as tenant A,
     sees none of A's state, scan rows, log entries, counters or queue items, and
     B's destructive calls (pop, drain, delete, clear, execution_clear, queue_clear)
     find nothing and leave A's data intact; B's own writes to the same keys stay B's.
  2. within tenant A, two shard_keys never see each other's state, queue, logs or
     counters (same scope ids and keys in both);
  3. execution_clear in one shard wipes that shard's state/logs/counters for the
     scope (returning their count) and leaves the other shard's data, and the queue;
  4. a client with no token, and one with a wrong token, gets PermissionError (the
     client raises it on HTTP 401 with a JSON body) on reads and on writes, and the
     refused writes change nothing.

Environment: SILO_URL_PY (the /python base URL), SILO_TOKEN_A, SILO_TOKEN_B.
Exit 0 with a one-line summary, or 1 with a message on the first failure.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from vgi.function_storage_cf_do import FunctionStorageCfDo


class Failure(Exception):
    pass


CHECKS = 0


def check(cond: bool, msg: str) -> None:
    global CHECKS
    CHECKS += 1
    if not cond:
        raise Failure(msg)


def eq(got: Any, want: Any, what: str) -> None:
    check(got == want, f"{what}: got {ab(got)}, want {ab(want)}")


def ab(x: Any) -> str:
    if isinstance(x, bytes):
        return repr(x) if len(x) <= 32 else f"{x[:24]!r}...<{len(x)} bytes>"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(ab(v) for v in x[:8]) + (", ..." if len(x) > 8 else "") + f"] ({len(x)})"
    return repr(x)[:300]


NSS = [b"ns\x00", b""]
KEYS = [b"", b"k1", b"\xff\xfe", b"/.."]
LOG_KEY = b"log\x00"
CTR_KEY = b"ctr/"


class Dataset:
    """One tenant's data in one shard, written through `c`, with what reads must return."""

    def __init__(self, c: FunctionStorageCfDo, shard: str, scope: bytes, tag: bytes) -> None:
        self.c, self.shard, self.scope, self.tag = c, shard, scope, tag
        self.state = {ns: {k: tag + b":" + ns + b":" + k for k in KEYS} for ns in NSS}
        self.log: list[tuple[int, bytes]] = []
        self.counter = 0
        self.queue: list[bytes] = []

    def write(self) -> None:
        c, kw = self.c, {"shard_key": self.shard}
        for ns, kv in self.state.items():
            c.state_put_many(self.scope, ns, sorted(kv.items()), **kw)
        for i in range(3):
            item = self.tag + b"-log-%d" % i
            self.log.append((c.state_append(self.scope, NSS[0], LOG_KEY, item, **kw), item))
        self.counter = c.state_counter_add(self.scope, NSS[0], CTR_KEY, len(self.tag) * 1000 + 7, **kw)
        self.queue = [self.tag + b"-q%d" % i for i in range(3)]
        eq(c.queue_push(self.scope, self.queue, **kw), 3, f"{self.tag!r} queue_push count")

    def verify(self, what: str, *, queue: bool = True) -> None:
        """All of this dataset, exactly, is visible to its owner (queue check consumes and restores it)."""
        c, kw = self.c, {"shard_key": self.shard}
        for ns, kv in self.state.items():
            keys = sorted(kv)
            eq(c.state_get_many(self.scope, ns, keys, **kw), [kv[k] for k in keys], f"{what}: {self.tag!r} state_get_many ns={ns!r}")
            eq(list(c.state_scan(self.scope, ns, **kw)), sorted(kv.items()), f"{what}: {self.tag!r} state_scan ns={ns!r}")
        eq(c.state_log_scan(self.scope, NSS[0], LOG_KEY, **kw), self.log, f"{what}: {self.tag!r} state_log_scan")
        eq(c.state_counter_get(self.scope, NSS[0], CTR_KEY, **kw), self.counter, f"{what}: {self.tag!r} counter")
        if queue:
            popped = [c.queue_pop(self.scope, **kw) for _ in range(len(self.queue) + 1)]
            eq(popped, [*self.queue, None], f"{what}: {self.tag!r} queue contents")
            c.queue_push(self.scope, self.queue, **kw)


def expect_invisible(c: FunctionStorageCfDo, shard: str, scope: bytes, what: str, *, destructive: bool) -> None:
    """Reads through `c` in `shard` find nothing for `scope` (someone else's data lives there)."""
    kw = {"shard_key": shard}
    for ns in NSS:
        eq(c.state_get_many(scope, ns, KEYS, **kw), [None] * len(KEYS), f"{what}: state_get_many ns={ns!r}")
        eq(list(c.state_scan(scope, ns, **kw)), [], f"{what}: state_scan ns={ns!r}")
        eq(list(c.state_scan(scope, ns, reverse=True, limit=2, **kw)), [], f"{what}: reverse state_scan ns={ns!r}")
    eq(c.state_log_scan(scope, NSS[0], LOG_KEY, **kw), [], f"{what}: state_log_scan")
    eq(c.state_counter_get(scope, NSS[0], CTR_KEY, **kw), 0, f"{what}: state_counter_get")
    if destructive:
        eq(c.queue_pop(scope, **kw), None, f"{what}: queue_pop")
        eq(list(c.state_drain(scope, NSS[1], **kw)), [], f"{what}: state_drain")
        eq(c.state_delete(scope, NSS[0], [KEYS[1]], **kw), 0, f"{what}: state_delete keys")
        eq(c.state_delete(scope, NSS[0], start=b"", **kw), 0, f"{what}: state_delete range")
        eq(c.state_delete(scope, NSS[0], **kw), 0, f"{what}: state_delete all")
        eq(c.execution_clear(scope, **kw), 0, f"{what}: execution_clear")
        eq(c.queue_clear(scope, **kw), 0, f"{what}: queue_clear")
        c.state_counter_delete(scope, NSS[0], CTR_KEY, **kw)


def expect_permission_error(c: FunctionStorageCfDo, shard: str, scope: bytes, who: str) -> None:
    kw = {"shard_key": shard}
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("state_get_many (read)", lambda: c.state_get_many(scope, NSS[0], KEYS, **kw)),
        ("state_scan (read)", lambda: list(c.state_scan(scope, NSS[0], **kw))),
        ("state_log_scan (read)", lambda: c.state_log_scan(scope, NSS[0], LOG_KEY, **kw)),
        ("state_counter_get (read)", lambda: c.state_counter_get(scope, NSS[0], CTR_KEY, **kw)),
        ("state_put_many (write)", lambda: c.state_put_many(scope, NSS[0], [(KEYS[1], b"intruder")], **kw)),
        ("state_append (write)", lambda: c.state_append(scope, NSS[0], LOG_KEY, b"intruder", **kw)),
        ("state_counter_add (write)", lambda: c.state_counter_add(scope, NSS[0], CTR_KEY, 1, **kw)),
        ("state_counter_set (write)", lambda: c.state_counter_set(scope, NSS[0], CTR_KEY, 1, **kw)),
        ("queue_push (write)", lambda: c.queue_push(scope, [b"intruder"], **kw)),
        ("queue_pop (write)", lambda: c.queue_pop(scope, **kw)),
        ("state_drain (write)", lambda: list(c.state_drain(scope, NSS[1], **kw))),
        ("state_delete (write)", lambda: c.state_delete(scope, NSS[0], **kw)),
        ("execution_clear (write)", lambda: c.execution_clear(scope, **kw)),
        ("queue_clear (write)", lambda: c.queue_clear(scope, **kw)),
    ]
    for name, fn in calls:
        try:
            got = fn()
        except PermissionError:
            check(True, "")
            continue
        except Exception as e:  # noqa: BLE001
            raise Failure(
                f"{who}: {name} raised {type(e).__name__}: {str(e)[:200]}, want PermissionError "
                "(the client raises it only for status 401 with a JSON body)"
            ) from None
        raise Failure(f"{who}: {name} succeeded (returned {ab(got)}), want PermissionError")


def main() -> int:
    url = os.environ.get("SILO_URL_PY", "")
    ta, tb = os.environ.get("SILO_TOKEN_A", ""), os.environ.get("SILO_TOKEN_B", "")
    if not (url and ta and tb):
        print("FAIL test_isolation: SILO_URL_PY, SILO_TOKEN_A and SILO_TOKEN_B must be set", file=sys.stderr)
        return 1
    if ta == tb:
        print("FAIL test_isolation: SILO_TOKEN_A and SILO_TOKEN_B are the same token", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    run = uuid.uuid4().hex
    scope = b"iso-" + run[:8].encode() + b"\x00/..\xff"  # also the queue execution id
    s1, s2 = "att-" + run, "att-" + uuid.uuid4().hex
    clients: list[FunctionStorageCfDo] = []

    def client(token: str | None) -> FunctionStorageCfDo:
        c = FunctionStorageCfDo(url=url, token=token)
        clients.append(c)
        return c

    try:
        a, b = client(ta), client(tb)

        # 1. Tenant isolation: A writes in s1; B with the same ids sees nothing and destroys nothing.
        a1 = Dataset(a, s1, scope, b"A1")
        expect_invisible(a, s1, scope, "A before writing (fresh ids)", destructive=False)
        a1.write()
        a1.verify("A after writing")
        expect_invisible(b, s1, scope, "B sees A's shard s1", destructive=True)
        a1.verify("A after B's reads and destructive calls")
        # B writes the same keys in the same shard: each tenant sees only its own.
        b1 = Dataset(b, s1, scope, b"B1")
        b1.write()
        b1.verify("B after writing over A's keys")
        a1.verify("A after B wrote the same keys")
        # B's execution_clear counts and removes only B's rows.
        eq(b.execution_clear(scope, shard_key=s1), 2 * len(KEYS) + 3 + 1, "B execution_clear count (B's rows + logs + counter only)")
        expect_invisible(b, s1, scope, "B after its own execution_clear", destructive=False)
        a1.verify("A after B's execution_clear")
        eq(b.queue_clear(scope, shard_key=s1), 3, "B queue_clear count (B's items only)")
        a1.verify("A after B's queue_clear")

        # 2. Shard isolation within tenant A: s2 with the same scope/keys is a separate store.
        expect_invisible(a, s2, scope, "A in shard s2 sees shard s1", destructive=True)
        a1.verify("A s1 after destructive calls in s2")
        a2 = Dataset(a, s2, scope, b"A2")
        a2.write()
        a2.verify("A s2 after writing")
        a1.verify("A s1 after writing s2")
        # and B's shard s2 is empty too
        expect_invisible(b, s2, scope, "B in shard s2", destructive=False)

        # 3. execution_clear in s2 leaves s1 (and s2's queue).
        eq(a.execution_clear(scope, shard_key=s2), 2 * len(KEYS) + 3 + 1, "A execution_clear in s2 count")
        expect_invisible(a, s2, scope, "A s2 after execution_clear", destructive=False)
        a1.verify("A s1 after execution_clear in s2")
        eq([a.queue_pop(scope, shard_key=s2) for _ in range(4)], [*a2.queue, None], "A s2 queue survives execution_clear")
        # and the other way round
        eq(a.execution_clear(scope, shard_key=s1), 2 * len(KEYS) + 3 + 1, "A execution_clear in s1 count")
        expect_invisible(a, s1, scope, "A s1 after execution_clear", destructive=False)
        eq(a.queue_clear(scope, shard_key=s1), 3, "A s1 queue_clear count")

        # 4. No token / wrong token: PermissionError, reads and writes, and nothing changes.
        a1 = Dataset(a, s1, scope, b"A1again")
        a1.write()
        b1 = Dataset(b, s1, scope, b"B1again")
        b1.write()
        for who, tok in [
            ("no token", None),
            ("wrong token", "wrong-" + uuid.uuid4().hex),
            ("A's token with a suffix", ta + "x"),
            ("truncated A token", ta[:-1] if len(ta) > 1 else "z"),
        ]:
            expect_permission_error(client(tok), s1, scope, who)
        a1.verify("A after refused requests")
        b1.verify("B after refused requests")
        for c, sh in ((a, s1), (b, s1), (a, s2)):
            c.execution_clear(scope, shard_key=sh)
            c.queue_clear(scope, shard_key=sh)
    except Failure as e:
        print(f"FAIL test_isolation: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"FAIL test_isolation: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        for c in clients:
            c.close()
    print(f"ok test_isolation: {CHECKS} checks (2 tenants, 2 shards, 4 refused credentials) {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
