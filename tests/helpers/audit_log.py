"""Helpers shared by the audit chain and verification tests (no tests here).

``impl`` runs a test once per verifier mode ("c", "c-batch", "pure"; see
:mod:`helpers.chain_impl`); the tamper helpers act as an attacker with write access to
the file would, with plain SQL.
"""
from __future__ import annotations

import hashlib

import apsw
import pytest

from heliosdb.audit import store
from heliosdb.audit.events import EventFields, encode_event

from helpers.chain_impl import activate, modes, select

__all__ = ["TABLE", "activate", "impl", "open_db", "sample_events", "make_log", "rehash",
           "shift_ids", "stamp"]

TABLE = "__audit_log"


@pytest.fixture(params=modes(["c", "c-batch", "pure"]))
def impl(request, monkeypatch):
    """Run the test in each verifier mode (see :mod:`helpers.chain_impl`); C is skipped,
    visibly, if not built (and fails under HELIOSDB_IMPL=c)."""
    select(monkeypatch, request.param)
    return request.param


def open_db(path: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.setbusytimeout(10000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # tests: no fsync (crash safety is not tested here)
    return conn


def sample_events(n: int, start: int = 0) -> list[EventFields]:
    """Varied events: NULLs, unicode, JSON values, failures."""
    ops = ["INSERT", "UPDATE", "DELETE", "SELECT", "CREATE_TABLE", "LOGIN"]
    out = []
    for i in range(start, start + n):
        k = i % 7
        out.append(EventFields(
            operation=ops[i % len(ops)],
            target=None if k == 3 else f"main.t{i % 5}",
            user=["alice", "bob", "zoë", None][i % 4],
            session_id=f"s-{i // 10}",
            query=None if k == 5 else f"UPDATE t SET v = {i} WHERE id = {i}",
            affected_rows=None if k in (3, 5) else i % 4,
            success=k != 6,
            error="constraint failed" if k == 6 else None,
            metadata={"client_ip": "10.0.0.1", "n": i} if k % 2 else None,
            old_values={"v": i - 1} if k == 1 else None,
            new_values={"v": i, "blob": b"\x00\xff"} if k == 1 else None,
            reason="ticket 42" if k == 2 else None,
        ))
    return out


def make_log(path: str, n: int, *, now_us: int | None = 1_700_000_000_000_000
             ) -> apsw.Connection:
    conn = open_db(path)
    store.ensure_schema(conn, TABLE)
    if n:
        store.append(conn, TABLE, sample_events(n), now_us=now_us)
    return conn


def rehash(conn: apsw.Connection, from_id: int, table: str = TABLE) -> None:
    """What an attacker without the checkpoint key can do: recompute the chain from
    ``from_id`` to the end so that it is internally consistent again."""
    rows = list(conn.execute(
        f'SELECT id, ts_us, affected_rows, success, session_id, "user", operation, target, '
        f"query, error, metadata, old_values, new_values, reason FROM {table} "
        "WHERE id >= ? ORDER BY id", (from_id,)))
    prev = None
    for (pk,) in conn.execute(f"SELECT checksum FROM {table} WHERE id < ? ORDER BY id DESC "
                              "LIMIT 1", (from_id,)):
        prev = pk
    if prev is None:
        prev = bytes(32)
    with conn:
        for r in rows:
            ck = hashlib.sha256(prev + encode_event(r[0], r[1], r[2], r[3], r[4:])).digest()
            conn.execute(f"UPDATE {table} SET prev_hash = ?, checksum = ? WHERE id = ?",
                         (prev, ck, r[0]))
            prev = ck


def shift_ids(conn: apsw.Connection, from_id: int, by: int, table: str = TABLE) -> None:
    """Renumber ids >= from_id by ``by`` (two steps: the primary key forbids overlaps)."""
    with conn:
        conn.execute(f"UPDATE {table} SET id = -id WHERE id >= ?", (from_id,))
        conn.execute(f"UPDATE {table} SET id = -id + ? WHERE id < 0", (by,))


def stamp(conn, events, at_us: int) -> None:
    """Append ``events`` to the audit log of the heliosdb connection ``conn`` at a chosen
    time (tests only: the store takes ``now_us``), as the audit itself writes them."""
    s = conn.audit
    with s._internal():
        store.append(s._db, s.table, events, now_us=at_us)
