"""Threads sharing one connection (``check_same_thread=False``) without a lock of their own.

stdlib sqlite3 serializes them: SQLite's connection mutex makes each call wait for the one
running in another thread. APSW instead refuses a call while another thread is inside the
connection (``ThreadingViolationError``, "Connection is busy in another thread"), which
escaped raw, could arrive after a statement had run, and broke code that works on sqlite3.
heliosdb serializes a shared connection's calls, as sqlite3 does; an audited connection
records every statement of every thread.
"""
from __future__ import annotations

import threading
from contextlib import closing

import heliosdb
from helpers.dbapi import db

INS = "INSERT INTO t(a, b) VALUES (?, ?)"
THREADS, ROUNDS = 4, 150


def _hammer(conn) -> list:
    """Each thread: inserts through conn.execute and a cursor of its own, commits, reads
    (fetchone, fetchall, iteration, executemany), with no lock of its own. The errors."""
    errors: list = []
    start = threading.Barrier(THREADS)

    def work(k: int) -> None:
        try:
            cur = conn.cursor()
            start.wait()
            for i in range(ROUNDS):
                if i % 2:
                    conn.execute(INS, (k, i))
                else:
                    cur.execute(INS, (k, i))
                if i % 10 == 0:
                    conn.commit()
                if i % 7 == 0:
                    conn.execute("SELECT count(*) FROM t").fetchone()
                    list(cur.execute("SELECT a, b FROM t WHERE a = ?", (k,)))
                    cur.execute("SELECT b FROM t WHERE a = ? ORDER BY b", (k,)).fetchall()
                if i % 25 == 0:
                    conn.executemany(INS, [(k, -i - j) for j in range(1, 4)])
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - what a thread meets is the observation
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _unlocked(mod, path):
    conn = mod.connect(db(path), check_same_thread=False)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    conn.commit()
    errors = _hammer(conn)
    conn.commit()
    rows = conn.execute("SELECT a, count(*) FROM t GROUP BY a ORDER BY a").fetchall()
    conn.close()
    return errors, rows


def test_threads_sharing_a_connection_without_a_lock(tmp_path):
    # Not compared with sqlite3 run for run: sqlite3 itself sometimes fails here ("cannot
    # start a transaction within a transaction": another thread's implicit BEGIN runs
    # between its check and its own). heliosdb, serialized, never does.
    errors, rows = _unlocked(heliosdb, tmp_path)
    assert errors == []
    assert rows == [(k, ROUNDS + 3 * 6) for k in range(THREADS)]


def test_an_audited_connection_shared_by_threads_records_every_statement(tmp_path):
    path = str(tmp_path / "a.db")
    conn = heliosdb.connect(path, config="default", check_same_thread=False)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    conn.commit()
    errors = _hammer(conn)
    conn.commit()
    conn.close()
    assert errors == []
    with closing(heliosdb.connect(path, config="default")) as check:
        rows = check.execute("SELECT count(*) FROM t").fetchone()[0]
        assert rows == THREADS * (ROUNDS + 3 * 6)
        logged = check.execute(
            "SELECT sum(affected_rows) FROM __audit_log WHERE operation = 'INSERT' AND "
            "success = 1 AND target = 't'").fetchone()[0]
        assert logged == rows
        assert check.audit.verify().ok


def test_interrupt_from_another_thread_does_not_wait_for_the_statement(tmp_path):
    """interrupt() is the one call meant for another thread while a statement runs: it
    must not wait for the connection (that would wait for the statement it stops)."""
    conn = heliosdb.connect(str(tmp_path / "i.db"), check_same_thread=False)
    started = threading.Event()

    def slow(x):
        started.set()
        return x

    conn.create_function("slow", 1, slow)
    stopper = threading.Thread(target=lambda: (started.wait(10), conn.interrupt()))
    stopper.start()
    try:
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT slow(x) + 1 FROM c) "
            "SELECT count(*) FROM c").fetchall()
    except heliosdb.OperationalError as exc:
        assert "interrupt" in str(exc)
    else:
        raise AssertionError("the endless query was not interrupted")
    finally:
        stopper.join(10)
        conn.close()


def test_the_audit_api_from_a_thread_while_others_write(tmp_path):
    """conn.audit's reads (events, verify, head) from one thread while others write."""
    path = str(tmp_path / "r.db")
    conn = heliosdb.connect(path, config="default", check_same_thread=False)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    conn.commit()
    stop = threading.Event()
    seen: list = []

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(len(conn.audit.events(operation="INSERT", limit=5)))
                assert conn.audit.verify().ok
                conn.audit.log("CUSTOM", details={"n": len(seen)})
        except Exception as exc:  # noqa: BLE001
            seen.append(f"{type(exc).__name__}: {exc}")
            raise

    r = threading.Thread(target=reader)
    r.start()
    try:
        errors = _hammer(conn)
    finally:
        stop.set()
        r.join()
    conn.close()
    assert errors == []
    assert seen and all(isinstance(n, int) for n in seen), seen[-3:]
    with closing(heliosdb.connect(path, config="default")) as check:
        assert check.audit.verify().ok


def test_only_shared_connections_are_serialized(tmp_path):
    one = heliosdb.connect(":memory:")
    assert type(one) is heliosdb.Connection and type(one.cursor()) is heliosdb.Cursor
    one.close()

    class MyCursor(heliosdb.Cursor):
        __slots__ = ()

    class MyConnection(heliosdb.Connection):
        pass

    conn = heliosdb.connect(str(tmp_path / "s.db"), check_same_thread=False,
                            factory=MyConnection)
    assert isinstance(conn, MyConnection) and type(conn).__name__ == "MyConnection"
    cur = conn.cursor(MyCursor)
    assert isinstance(cur, MyCursor) and type(cur).__name__ == "MyCursor"
    assert isinstance(conn.execute("SELECT 1"), heliosdb.Cursor)
    conn.execute("CREATE TABLE b(x)")
    conn.execute("INSERT INTO b VALUES (zeroblob(4))")
    conn.commit()
    with conn.blobopen("b", "x", 1) as blob:
        blob.write(b"abcd")
        blob.seek(0)
        assert blob.read() == b"abcd" and len(blob) == 4
    assert any("CREATE TABLE b" in line for line in conn.iterdump())
    assert conn.in_transaction is False
    conn.isolation_level = None
    assert conn.isolation_level is None
    conn.close()


def test_iterdump_of_a_shared_connection_while_another_thread_writes(tmp_path):
    conn = heliosdb.connect(str(tmp_path / "d.db"), check_same_thread=False)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    conn.executemany(INS, [(i, "x" * 50) for i in range(500)])
    conn.commit()
    lines: list = []
    dumper = threading.Thread(target=lambda: lines.extend(conn.iterdump()))
    dumper.start()
    errors = _hammer(conn)
    dumper.join()
    conn.close()
    assert errors == [] and sum(line.startswith('INSERT INTO "t"') for line in lines) >= 500
