"""A user's progress handler or interrupt() must not let a change commit without its event.

Found 2026-12-06: a progress handler that aborts stopped heliosdb's own audit write at
commit and then the ROLLBACK after it (the error was swallowed); the transaction stayed
open, and the next commit() committed every change while the log recorded them as rolled
back. The same with interrupt() while a cursor of the user's is still active (SQLite then
interrupts every statement, the ROLLBACK included). Now the audit's own statements are not
offered to the user's progress handler, and a transaction whose ROLLBACK failed can only
roll back (a commit hook turns its COMMIT into a rollback).
"""
from __future__ import annotations

import pytest

import heliosdb


def _committed_vs_logged(path) -> tuple[int, int, bool]:
    conn = heliosdb.connect(str(path), config="default")
    try:
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        logged = conn.execute(
            "SELECT count(*) FROM __audit_log WHERE operation = 'INSERT' AND success = 1 "
            "AND target LIKE '%t'").fetchone()[0]
        return rows, logged, conn.audit.verify().ok
    finally:
        conn.close()


@pytest.mark.parametrize("n", [10, 100])  # the executemany path and the C writer's batch
@pytest.mark.parametrize("allowed", [1, 5, 50, 200, 2000])
def test_an_aborting_progress_handler_never_commits_an_unlogged_change(tmp_path, n, allowed):
    path = tmp_path / "p.db"
    conn = heliosdb.connect(str(path), config="default")
    conn.execute("CREATE TABLE t(a)")
    conn.commit()
    for i in range(n):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    calls = [0]

    def handler():
        calls[0] += 1
        return calls[0] > allowed

    conn.set_progress_handler(handler, 1)
    try:
        conn.commit()
    except heliosdb.OperationalError:
        pass
    conn.set_progress_handler(None, 1)
    conn.commit()  # whatever is still open
    conn.close()
    rows, logged, ok = _committed_vs_logged(path)
    assert rows == logged and rows in (0, n)
    assert ok


def test_a_transaction_whose_rollback_was_interrupted_cannot_commit(tmp_path):
    path = tmp_path / "i.db"
    conn = heliosdb.connect(str(path), config="default")
    conn.execute("CREATE TABLE t(a)")
    conn.execute("CREATE TABLE r(x)")
    conn.executemany("INSERT INTO r VALUES (?)", [(i,) for i in range(10)])
    conn.commit()
    for i in range(20):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    reader = conn.cursor()
    reader.execute("SELECT x FROM r")
    reader.fetchone()  # an active statement: interrupt() now stops every statement
    conn.interrupt()
    with pytest.raises(heliosdb.OperationalError, match="interrupted"):
        conn.commit()  # the audit write is interrupted, then its ROLLBACK
    assert conn.in_transaction
    with pytest.raises(heliosdb.OperationalError):
        reader.fetchall()
    with pytest.raises(heliosdb.OperationalError, match="was not committed .*audit write "
                                                         "failed: interrupted"):
        conn.commit()
    assert not conn.in_transaction
    conn.execute("INSERT INTO t VALUES (99)")  # the connection works on
    conn.commit()
    conn.close()
    rows, logged, ok = _committed_vs_logged(path)
    assert (rows, logged, ok) == (1, 1, True)
    conn = heliosdb.connect(str(path), config="default")
    failed = conn.execute("SELECT count(*) FROM __audit_log WHERE operation = 'INSERT' "
                          "AND success = 0").fetchone()[0]
    conn.close()
    assert failed == 20  # the attempt is on record
