"""execute()'s hot path (heliosdb/audit/capture.py AuditSession.execute): a DML text already
classified, run again inside an open transaction, is recorded without _execute/_finish.
It must record exactly what the general path records, and leave the cursor the same
rowcount and lastrowid: each scenario runs twice, hot path on and off (``_hot_allowed``),
and the stored events are compared field by field (the execution time aside, which is
measured). Runs with the C chain writer and with the pure-Python fallback (``chain_impl``).
"""
from __future__ import annotations

import json
import re
import threading

import apsw
import pytest

import heliosdb
from heliosdb.audit import capture
from heliosdb.audit.events import canonical_json

pytestmark = pytest.mark.usefixtures("chain_impl")

_FIELDS = ("operation", "target", "user", "query", "affected_rows", "success", "error",
           "metadata", "old_values", "new_values", "reason")
_INS = "INSERT INTO t(name, val) VALUES (?, ?)"
_UPD = "UPDATE t SET val = val + 1 WHERE id = ?"


def _events(path: str) -> list[tuple]:
    db = apsw.Connection(path)
    try:
        cols = ", ".join(f'"{c}"' for c in _FIELDS)
        out = []
        for row in db.execute(f"SELECT {cols} FROM __audit_log ORDER BY id"):
            row = list(row)
            md = row[7]
            if md is not None:
                parsed = json.loads(md)
                assert canonical_json(parsed) == md  # stored in canonical form
                ms = parsed.pop("execution_time_ms", None)
                if ms is not None:  # to the microsecond, as repr(us / 1000) writes it
                    assert re.fullmatch(r"\d+\.\d{1,3}", repr(ms)), ms
                row[7] = parsed
            out.append(tuple(row))
        return out
    finally:
        db.close()


def _run(path: str, hot: bool, scenario, **connect_kw) -> tuple[list, list]:
    conn = heliosdb.connect(path, config="default", audit_user="alice", **connect_kw)
    conn.audit._hot_allowed = hot
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, val INTEGER)")
    conn.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, t_id INTEGER)")
    conn.commit()
    seen: list = []
    scenario(conn, seen)
    conn.close()
    return _events(path), seen


def _both(tmp_path, scenario, **connect_kw) -> list:
    (tmp_path / "hot").mkdir()
    (tmp_path / "cold").mkdir()  # (the same file name: database_name is recorded)
    hot, hot_seen = _run(str(tmp_path / "hot" / "db"), True, scenario, **connect_kw)
    cold, cold_seen = _run(str(tmp_path / "cold" / "db"), False, scenario, **connect_kw)
    assert hot_seen == cold_seen
    assert hot == cold
    return hot


def _stmt(cur, sql, params, seen):
    cur.execute(sql, params)
    seen.append((cur.rowcount, cur.lastrowid))


def test_repeated_inserts_and_updates(tmp_path):
    def scenario(conn, seen):
        cur = conn.cursor()
        for i in range(6):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        for i in (1, 2, 99, 3):  # 99 matches no row: 0 rows
            _stmt(cur, _UPD, (i,), seen)
        for sql, p in (("INSERT OR IGNORE INTO t(name, val) VALUES (?, ?)", ("n1", 0)),
                       ("REPLACE INTO t(name, val) VALUES (?, ?)", ("n2", 7)),
                       ("DELETE FROM t WHERE id = ?", (4,)),
                       ("WITH v(x) AS (VALUES (?)) INSERT INTO u(t_id) SELECT x FROM v",
                        (3,)),
                       ("EXPLAIN INSERT INTO u(t_id) VALUES (?)", (1,))):
            for _ in range(3):  # the first run classifies it, the next ones take the hot path
                _stmt(cur, sql, p, seen)
                if sql.startswith("EXPLAIN"):
                    cur.fetchall()
        conn.commit()

    evs = _both(tmp_path, scenario)
    assert [e[4] for e in evs if e[3] == _UPD] == [1, 1, 0, 1]
    assert [e[4] for e in evs if (e[3] or "").startswith("INSERT OR IGNORE")] == [0, 0, 0]
    assert [e[4] for e in evs if (e[3] or "").startswith("EXPLAIN")] == [0, 0, 0]


def test_rows_changed_by_triggers_and_nested_statements(tmp_path):
    """affected_rows counts the statement's own rows: not a trigger's, nor those of a
    statement a user function runs meanwhile (changes() against total_changes())."""
    def scenario(conn, seen):
        conn.execute("CREATE TRIGGER tr AFTER UPDATE ON t BEGIN "
                     "INSERT INTO u(t_id) VALUES (new.id); END")
        conn.create_function("side", 1, lambda x: conn.execute(
            "INSERT INTO u(t_id) VALUES (?)", (x,)).rowcount)
        cur = conn.cursor()
        for i in range(3):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        for i in (1, 2, 42, 1):
            _stmt(cur, _UPD, (i,), seen)
        for i in (1, 2, 42, 3):
            _stmt(cur, "UPDATE t SET val = side(val) WHERE id = ?", (i,), seen)
        conn.commit()

    evs = _both(tmp_path, scenario)
    assert [e[4] for e in evs if e[3] == _UPD] == [1, 1, 0, 1]
    assert [e[4] for e in evs if (e[3] or "").startswith("UPDATE t SET val = side")] == [1, 1, 0, 1]


def test_failures_rollbacks_and_savepoints(tmp_path):
    def scenario(conn, seen):
        cur = conn.cursor()
        for i in range(3):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        with pytest.raises(heliosdb.IntegrityError):
            cur.execute(_INS, ("n1", 0))  # in the hot path: recorded as failed
        _stmt(cur, _INS, ("n3", 3), seen)
        conn.execute("SAVEPOINT sp")
        _stmt(cur, _INS, ("n4", 4), seen)
        _stmt(cur, _UPD, (1,), seen)
        _stmt(cur, _UPD, (2,), seen)
        conn.execute("ROLLBACK TO sp")  # the events after it: rolled back
        _stmt(cur, _UPD, (3,), seen)
        conn.commit()
        for i in range(5, 8):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        conn.rollback()  # the whole transaction: failed copies of its events
        _stmt(cur, _UPD, (1,), seen)
        _stmt(cur, _UPD, (1,), seen)
        conn.commit()

    evs = _both(tmp_path, scenario)
    assert [e[5] for e in evs if e[3] == _INS].count(0) == 1 + 1 + 3


def test_context_reason_and_acting_as(tmp_path):
    """set_context() changes the metadata and reason of the next events; inside
    acting_as() the hot path is not taken (the frame's actor is recorded)."""
    def scenario(conn, seen):
        cur = conn.cursor()
        for i in range(3):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        conn.audit.set_context(reason="ticket 7", application_name="app", ward="3B")
        for i in range(3, 6):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        with conn.audit.acting_as("bob", reason="on call"):
            for i in (1, 2):
                _stmt(cur, _UPD, (i,), seen)
        _stmt(cur, _UPD, (3,), seen)
        conn.audit.set_context(reason=None)
        _stmt(cur, _UPD, (4,), seen)
        conn.commit()

    evs = _both(tmp_path, scenario, audit_context={"client_ip": "10.1.2.3"})
    upd = [e for e in evs if e[3] == _UPD]
    assert [(e[2], e[10]) for e in upd] == [("bob", "on call"), ("bob", "on call"),
                                          ("alice", "ticket 7"), ("alice", None)]
    assert all(e[7]["client_ip"] == "10.1.2.3" for e in evs if e[3] in (_INS, _UPD))


def test_acting_as_on_another_thread_keeps_this_threads_actor(tmp_path):
    """An acting_as() frame open on one thread (the hot path then reads this thread's
    frame, a thread-local) does not change the actor of another thread's events."""
    def scenario(conn, seen):
        inside, leave = threading.Event(), threading.Event()

        def other():
            with conn.audit.acting_as("bob"):
                inside.set()
                leave.wait(10)

        t = threading.Thread(target=other)
        t.start()
        inside.wait(10)
        cur = conn.cursor()
        for i in range(4):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        leave.set()
        t.join()
        assert conn.audit._acting == 0
        for i in range(4, 6):
            _stmt(cur, _INS, (f"n{i}", i), seen)
        conn.commit()

    evs = _both(tmp_path, scenario, check_same_thread=False)
    assert {e[2] for e in evs if e[3] == _INS} == {"alice"}


def test_hot_metadata_is_the_timed_metadata(tmp_path):
    """The metadata texts kept by execution time are those _timed_metadata builds."""
    conn = heliosdb.connect(str(tmp_path / "m.db"), config="default",
                            audit_context={"client_ip": "10.0.0.9"})
    s = conn.audit
    for ns in (0, 499, 500, 1_499, 12_345_678, 999_999_499, 10**12 + 123_456_789):
        us = (ns + 500) // 1000
        built = s._timed_metadata(ns) or None
        assert s._hot_metadata(us, ns) == built
        assert s._md_parts[3][us] == built
    s.set_context(application_name="x")  # new parts: nothing kept from the old ones
    assert s._md_parts is None
    assert s._metadata_parts()[3] == {}
    conn.close()


def test_the_hot_path_runs(tmp_path, monkeypatch):
    """(The comparisons above compare something: the hot path takes the repeated DML.)"""
    calls: list = []
    real = capture.AuditSession._finish

    def spy(self, *a, **kw):
        calls.append(a[1])
        return real(self, *a, **kw)

    monkeypatch.setattr(capture.AuditSession, "_finish", spy)
    conn = heliosdb.connect(str(tmp_path / "h.db"), config="default")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, val INTEGER)")
    cur = conn.cursor()
    for i in range(10):
        cur.execute(_INS, (f"n{i}", i))
    conn.commit()
    assert calls.count(_INS) == 1  # the first run only
    conn.close()
