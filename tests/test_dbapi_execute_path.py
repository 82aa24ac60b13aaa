"""The execute path's shortcuts (issue 17, item 4), differentially against stdlib sqlite3.

heliosdb runs DML without RETURNING on spare APSW cursors of the connection, inlines the
common statements in ``Connection.execute``, reads ``description`` lazily and issues the
implicit BEGIN between statements (compiled, BEGIN, bound: sqlite3's order). Each test
here observes what those shortcuts could change: rowcount, lastrowid, description and rows
of every kind of statement and cursor, the same SQL text on its first and later runs,
transactions, errors, re-entrant and threaded use, the trace callback, and (Python 3.10,
APSW 3.54.0) that a connection dropped without close() is still collected.
"""
from __future__ import annotations

import gc
import threading
import weakref

import heliosdb
from helpers.dbapi import attempt, db, mod, same  # noqa: F401 - `mod` is a fixture

INS = "INSERT INTO t(a, b) VALUES (?, ?)"


def _open(mod, path, **kw):
    conn = mod.connect(db(path), **kw)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    return conn


def _state(cur):
    return (cur.rowcount, cur.lastrowid, cur.description, cur.fetchone(), cur.fetchall(),
            list(cur))


def _counts_and_ids(mod, path):
    conn = _open(mod, path)
    out = []
    for i in range(4):  # the first run of a text takes the long path, the others not
        out.append(("insert", i, _state(conn.execute(INS, (i, f"x{i}")))))
    out.append(("select", _state(conn.execute("SELECT a, b FROM t WHERE a < ?", (2,)))))
    out.append(("update none", _state(conn.execute("UPDATE t SET b = 'y' WHERE a > 99"))))
    out.append(("update some", _state(conn.execute("UPDATE t SET b = 'y' WHERE a > 0"))))
    out.append(("replace", _state(conn.execute("REPLACE INTO t(id, a) VALUES (1, 7)"))))
    out.append(("delete", _state(conn.execute("DELETE FROM t WHERE a = ?", (3,)))))
    out.append(("ddl", _state(conn.execute("CREATE TABLE u(x)"))))
    out.append(("pragma", _state(conn.execute("PRAGMA user_version"))))
    out.append(("in tx", conn.in_transaction))
    conn.commit()
    out.append(("after commit", conn.in_transaction, conn.total_changes))
    conn.close()
    return out


def test_rowcount_lastrowid_description_of_each_statement(mod, tmp_path):
    same(_counts_and_ids, mod, tmp_path)


def _one_cursor(mod, path):
    conn = _open(mod, path)
    conn.executemany(INS, [(i, "x") for i in range(5)])
    cur = conn.cursor()
    out = [_state(cur)]
    cur.execute("SELECT a FROM t ORDER BY a")
    out.append((cur.rowcount, cur.description, cur.fetchone()))
    cur.execute(INS, (10, "y"))  # a cursor with rows of a query runs DML next
    out.append(_state(cur))
    for i in range(3):
        cur.execute(INS, (20 + i, "z"))
        out.append((cur.rowcount, cur.lastrowid, cur.description))
    cur.execute("SELECT count(*) FROM t")
    out.append(_state(cur))
    fresh = conn.cursor()
    fresh.execute("UPDATE t SET b = ? WHERE a >= ?", ("w", 20))
    out.append(_state(fresh))
    fresh.execute("SELECT b FROM t WHERE a = 21")
    out.append(_state(fresh))
    conn.commit()
    return out


def test_a_cursor_moving_between_queries_and_dml(mod, tmp_path):
    same(_one_cursor, mod, tmp_path)


def _pending_rows_survive_dml(mod, path):
    conn = _open(mod, path)
    conn.executemany(INS, [(i, "x") for i in range(10)])
    conn.commit()
    reading = conn.execute("SELECT a FROM t ORDER BY a")
    first = reading.fetchone()
    for i in range(5):  # DML on other cursors (spare ones, in heliosdb) meanwhile
        conn.execute("UPDATE t SET b = ? WHERE a = ?", ("y", i))
    rest = reading.fetchall()
    conn.commit()
    return first, rest, conn.execute("SELECT count(*) FROM t WHERE b = 'y'").fetchone()


def test_rows_of_a_query_survive_dml_run_meanwhile(mod, tmp_path):
    same(_pending_rows_survive_dml, mod, tmp_path)


def _implicit_begin_order(mod, path):
    """sqlite3 compiles, then BEGINs, then binds: a statement that does not compile opens
    no transaction; a binding error happens inside the one just opened."""
    conn = _open(mod, path)
    out = []
    for sql, params in [("INSERT INTO nosuch VALUES (?)", (1,)),
                        ("INSERT INTO t(a) VALUES (?)", (1, 2)),
                        ("INSERT INTO t(a) VALUES (?)", (object(),)),
                        ("INSERT INTO t(a) VALUES (1", ()),
                        ("UPDATE t SET a = ? WHERE id = 1", ()),
                        ("INSERT INTO t(a) VALUES (?)", (5,))]:
        out.append((sql, attempt(mod, lambda: conn.execute(sql, params).rowcount),
                    conn.in_transaction))
        conn.rollback()
    for seq in ([], iter([]), [(1,)]):
        out.append(("executemany", attempt(mod, lambda: conn.executemany(
            "INSERT INTO t(a) VALUES (?)", seq).rowcount), conn.in_transaction))
        conn.rollback()
    out.append(("executemany bad", attempt(mod, lambda: conn.executemany(
        "INSERT INTO nosuch VALUES (?)", [])), conn.in_transaction))
    conn.isolation_level = None
    out.append(("autocommit", conn.execute(INS, (1, "a")).rowcount, conn.in_transaction))
    conn.isolation_level = "IMMEDIATE"
    out.append(("immediate", conn.execute(INS, (2, "b")).rowcount, conn.in_transaction))
    conn.commit()
    out.append(conn.execute("SELECT a FROM t ORDER BY a").fetchall())
    return out


def test_implicit_begin_in_sqlite3s_order(mod, tmp_path):
    same(_implicit_begin_order, mod, tmp_path)


def _errors_on_the_short_path(mod, path):
    conn = _open(mod, path)
    conn.execute("CREATE UNIQUE INDEX ua ON t(a)")
    out = []
    for _ in range(3):
        out.append(attempt(mod, lambda: conn.execute(INS, (1, "dup"))))
    cur = conn.cursor()
    out.append(attempt(mod, lambda: cur.execute(INS, (1, "dup"))))
    out.append(_state(cur))
    conn.commit()
    conn.close()
    out.append(attempt(mod, lambda: conn.execute(INS, (2, "x"))))
    return out


def test_errors_on_the_short_path(mod, tmp_path):
    same(_errors_on_the_short_path, mod, tmp_path)


def _reentrant(mod, path):
    conn = _open(mod, path)
    conn.execute("CREATE TABLE log(x)")
    conn.commit()

    def record(x):
        # DML run from inside a statement that is itself running on a (spare) cursor
        conn.execute("INSERT INTO log VALUES (?)", (x,))
        return x

    conn.create_function("record", 1, record)
    out = []
    for i in range(3):
        cur = conn.execute("INSERT INTO t(a) VALUES (record(?))", (i,))
        out.append((cur.rowcount, cur.lastrowid))
    conn.commit()
    out.append(conn.execute("SELECT x FROM log ORDER BY x").fetchall())
    out.append(conn.execute("SELECT a FROM t ORDER BY a").fetchall())
    return out


def test_dml_run_from_a_function_inside_dml(mod, tmp_path):
    same(_reentrant, mod, tmp_path)


def _threads(mod, path):
    # Turns taken under a lock, so that sqlite3's outcome is fixed too (without one, its
    # implicit BEGIN races: tests/test_dbapi_threads.py).
    conn = _open(mod, path, check_same_thread=False)
    conn.commit()
    errors = []
    lock = threading.Lock()

    def work(k):
        try:
            for i in range(200):
                with lock:
                    conn.execute(INS, (k, i))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.commit()
    return errors, conn.execute("SELECT a, count(*) FROM t GROUP BY a").fetchall()


def test_threads_sharing_a_connection(mod, tmp_path):
    same(_threads, mod, tmp_path)


def _wrong_thread(mod, path):
    conn = _open(mod, path)
    conn.execute(INS, (1, "x"))
    conn.execute(INS, (2, "x"))
    seen = []
    t = threading.Thread(target=lambda: seen.append(
        attempt(mod, lambda: conn.execute(INS, (3, "x")), message=False)))
    t.start()
    t.join()
    conn.commit()
    return seen, conn.execute("SELECT count(*) FROM t").fetchone()


def test_another_thread_is_refused(mod, tmp_path):
    same(_wrong_thread, mod, tmp_path)


def _traced(mod, path):
    conn = _open(mod, path)
    seen = []
    conn.set_trace_callback(seen.append)
    for i in range(3):
        conn.execute(INS, (i, "x"))
    cur = conn.cursor()
    cur.execute("SELECT a FROM t").fetchall()
    for i in range(2):
        cur.execute(INS, (10 + i, "y"))
    conn.executemany(INS, [(20, "z"), (21, "z")])
    conn.commit()
    conn.set_trace_callback(None)
    conn.execute(INS, (30, "q"))
    conn.commit()
    return seen


def test_trace_callback_sees_every_statement(mod, tmp_path):
    same(_traced, mod, tmp_path)


def _row_factory(mod, path):
    conn = _open(mod, path)
    conn.row_factory = mod.Row
    out = []
    for i in range(2):
        cur = conn.execute(INS, (i, "x"))
        out.append((cur.row_factory is mod.Row, cur.fetchone(), cur.description))
    row = conn.execute("SELECT a, b FROM t ORDER BY a").fetchone()
    out.append((tuple(row), row["b"], row.keys()))
    conn.commit()
    return out


def test_row_factory_on_dml_and_queries(mod, tmp_path):
    same(_row_factory, mod, tmp_path)


def _reused_cursor(mod, path):
    """One cursor running the same INSERT text again and again (heliosdb: after its second
    run, a path that only binds, steps and reads rowcount and lastrowid) with every other
    kind of statement and cursor operation in between."""
    conn = _open(mod, path)
    conn.execute("CREATE UNIQUE INDEX ua ON t(a)")
    conn.commit()
    cur = conn.cursor()
    out = []

    def ins(a, params=None):
        out.append(("ins", a, attempt(mod, lambda: cur.execute(
            INS, (a, "x") if params is None else params).rowcount), _state(cur),
            conn.in_transaction))

    for a in range(3):
        ins(a)
    ins(0)  # a constraint error on the short path, then the same text again
    ins(3)
    ins(4, (4,))  # a binding error
    ins(5)
    cur.execute("SELECT a, b FROM t ORDER BY a")  # a query with rows left
    out.append(("select", cur.rowcount, cur.description, cur.fetchone()))
    ins(6)  # the rows are gone, and so is the description
    cur.execute("SELECT a FROM t WHERE a > ?", (4,))
    out.append(("select read", cur.fetchall(), cur.description))
    ins(7)
    ins(8)
    cur.execute("UPDATE t SET b = 'u' WHERE a > ?", (6,))  # another DML text
    out.append(("update", _state(cur)))
    ins(9)
    cur.execute("DELETE FROM t WHERE a = ? RETURNING a", (9,))  # DML that yields rows
    out.append(("returning", cur.rowcount, cur.description, cur.fetchone(), cur.rowcount))
    ins(10)
    ins(11)
    cur.executemany(INS, [(12, "m"), (13, "m")])
    out.append(("executemany", _state(cur)))
    ins(14)
    conn.commit()  # the next one opens a transaction (implicit BEGIN)
    out.append(("committed", conn.in_transaction))
    ins(15)
    ins(16)
    conn.rollback()
    ins(17)
    ins(18)
    cur.executescript("INSERT INTO t(a, b) VALUES (19, 's');")
    # (rowcount and the rest are left out: sqlite3's executescript leaves the cursor's
    # last statement, its rows included, as they were; heliosdb resets them)
    out.append(("script", cur.lastrowid, conn.in_transaction))
    ins(20)
    ins(21)
    conn.isolation_level = None  # autocommit: no transaction to open
    ins(22)
    ins(23)
    out.append(("in tx", conn.in_transaction))
    conn.isolation_level = ""
    ins(24)
    ins(25)
    ins(26, [26, "list"])  # other kinds of parameters, same text
    ins(27, {"a": 1})
    ins(28)
    same_text = "".join(["INSERT INTO t(a, b) ", "VALUES (?, ?)"])  # equal, not identical
    out.append(("equal text", cur.execute(same_text, (29, "e")).rowcount, cur.lastrowid))
    ins(30)
    out.append(("none", attempt(mod, lambda: cur.execute(None))))
    out.append(("none again", attempt(mod, lambda: cur.execute(None, ()))))
    out.append(("none many", attempt(mod, lambda: cur.executemany(None, []))))
    ins(31)
    conn.commit()
    out.append(conn.execute("SELECT a, b FROM t ORDER BY a").fetchall())
    cur.close()
    out.append(("closed", attempt(mod, lambda: cur.execute(INS, (40, "c")))))
    live = conn.cursor()
    live.execute(INS, (41, "l"))
    live.execute(INS, (42, "l"))
    conn.commit()
    conn.close()
    out.append(("conn closed", attempt(mod, lambda: live.execute(INS, (43, "l")))))
    return out


def test_a_reused_cursor_running_the_same_dml(mod, tmp_path):
    same(_reused_cursor, mod, tmp_path)


def _reused_cursor_other_thread(mod, path):
    conn = _open(mod, path)
    cur = conn.cursor()
    cur.execute(INS, (1, "x"))
    cur.execute(INS, (2, "x"))
    seen = []
    t = threading.Thread(target=lambda: seen.append(
        attempt(mod, lambda: cur.execute(INS, (3, "x")), message=False)))
    t.start()
    t.join()
    cur.execute(INS, (4, "x"))
    conn.commit()
    return seen, (cur.rowcount, cur.lastrowid), conn.execute(
        "SELECT a FROM t ORDER BY a").fetchall()


def test_a_reused_cursor_in_another_thread_is_refused(mod, tmp_path):
    same(_reused_cursor_other_thread, mod, tmp_path)


def _uninitialised_cursor(mod, path):
    conn = _open(mod, path)

    class Lazy(mod.Cursor):
        def __init__(self, connection):  # never calls Cursor.__init__
            pass

    cur = Lazy(conn)
    return [attempt(mod, lambda: cur.execute(INS, (1, "x"))),
            attempt(mod, lambda: cur.fetchone())]


def test_a_cursor_whose_init_was_not_called(mod, tmp_path):
    same(_uninitialised_cursor, mod, tmp_path)


def _cursor_init_again(mod, path):
    """Cursor.__init__ called again, with another connection: sqlite3 drops the cursor's
    statement and state, and its DML then runs on the new connection."""
    first = _open(mod, path)
    other = mod.connect(db(path) + "-other")
    other.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    cur = first.cursor()
    cur.arraysize = 5
    for i in range(3):  # the same text, so that it is known to the cursor
        cur.execute(INS, (i, "first"))
    cur.execute("SELECT a FROM t ORDER BY a")
    out = [cur.fetchone()]
    cur.__init__(other)
    out.append((cur.rowcount, cur.lastrowid, cur.description, cur.fetchone(), cur.arraysize,
                cur.connection is other))
    for i in range(3):
        cur.execute(INS, (10 + i, "other"))
        out.append((cur.rowcount, cur.lastrowid))
    cur.close()
    cur.__init__(first)  # a closed cursor is usable again
    cur.execute(INS, (20, "again"))
    cur.execute(INS, (21, "again"))
    out.append((cur.rowcount, cur.lastrowid))
    first.commit()
    other.commit()
    out.append(first.execute("SELECT a, b FROM t ORDER BY a").fetchall())
    out.append(other.execute("SELECT a, b FROM t ORDER BY a").fetchall())
    return out


def test_cursor_init_called_again(mod, tmp_path):
    same(_cursor_init_again, mod, tmp_path)


def _lists_and_dicts(mod, path):
    """Parameters as lists and dicts, on each path a text takes (first run, known text
    through conn.execute, a reused cursor): rowcount, lastrowid, errors, a list an
    adapter empties while it is bound (sqlite3: IndexError), a list reused and changed
    between statements."""
    conn = _open(mod, path)
    named = "INSERT INTO t(a, b) VALUES (:a, :b)"
    query = "SELECT a, b FROM t WHERE a = :a"

    class Clearing:
        def __init__(self, seq):
            self.seq = seq

        def __conform__(self, protocol):
            self.seq.clear()
            return "conformed"

    cur = conn.cursor()
    out = []
    for run in range(4):
        for label, ex in (("conn", conn.execute), ("cursor", cur.execute)):
            base = 100 * run + (0 if label == "conn" else 50)
            out.append((label, run, attempt(mod, lambda: (
                lambda c: (c.rowcount, c.lastrowid))(ex(INS, [base, "list"])))))
            out.append((label, run, attempt(mod, lambda: (
                lambda c: (c.rowcount, c.lastrowid))(ex(named, {"a": base + 1, "b": "d"})))))
            out.append((label, run, attempt(mod, lambda: ex(INS, [base + 2]))))
            out.append((label, run, attempt(mod, lambda: ex(named, {"a": base + 3}))))
            out.append((label, run, attempt(mod, lambda: ex(INS, (base + 4,)))))
            seq = [base + 5, None]
            seq[1] = Clearing(seq)
            out.append((label, run, attempt(mod, lambda: ex(INS, seq)), seq))
            first = [None, "emptied first"]
            first[0] = Clearing(first)
            out.append((label, run, attempt(mod, lambda: ex(INS, first)), first))
            reused = [base + 6, "r"]
            ex(INS, reused)
            reused[0] = base + 7
            ex(INS, reused)
            out.append((label, run, attempt(mod, lambda: ex(query, {"a": base}).fetchall())))
            out.append((label, run, attempt(mod, lambda: ex(query, {"a": base}).description)))
            out.append((label, run, attempt(mod, lambda: ex(query, {}).fetchall())))
    conn.commit()
    out.append(conn.execute("SELECT a, b FROM t ORDER BY a").fetchall())
    return out


def test_list_and_dict_parameters_on_each_path(mod, tmp_path):
    same(_lists_and_dicts, mod, tmp_path)


def test_a_connection_dropped_without_close_is_collected(tmp_path):
    # Python 3.10 with APSW 3.54.0: every cursor made leaks a reference to each live cursor
    # of its connection; the implicit BEGIN and the spare cursors must not set that off.
    # (A cursor the caller keeps across a commit still does there: not tested.)
    # (Audited DDL and PRAGMAs set it off inside the audit, before and after this change:
    # the audited database gets its table from a connection closed first.)
    for audited in (False, True):
        path = str(tmp_path / f"d{audited}.db")
        config = "default" if audited else None
        setup = heliosdb.connect(path, config=config)
        setup.execute("CREATE TABLE t(a)")
        setup.close()
        conn = heliosdb.connect(path, config=config)
        conn.execute("INSERT INTO t VALUES (1)")  # implicit BEGIN
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("SELECT * FROM t").fetchall()
        conn.cursor().execute("UPDATE t SET a = a + 1")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (3)")
        ref = weakref.ref(conn)
        del conn
        gc.collect()
        assert ref() is None, f"connection (audited={audited}) dropped but never collected"


_ADAPTED_LATER = r"""
import sqlite3, heliosdb
out = []
for mod in (sqlite3, heliosdb):
    conn = mod.connect(":memory:")
    conn.execute("CREATE TABLE t(a)")
    cur = conn.cursor()
    for i in range(3):  # the text is known to take the shortest path by now
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        cur.execute("INSERT INTO t VALUES (?)", (i,))  # and so on a reused cursor
    mod.register_adapter(int, lambda v: v * 10)  # registered while the connection is open
    conn.execute("INSERT INTO t VALUES (?)", (5,))
    cur.execute("INSERT INTO t VALUES (?)", (5,))
    other = mod.connect(":memory:")
    other.execute("CREATE TABLE t(a)")
    other.execute("INSERT INTO t VALUES (?)", (6,))
    other.execute("INSERT INTO t VALUES (?)", (7,))
    out.append((conn.execute("SELECT a FROM t").fetchall(),
                other.execute("SELECT a FROM t").fetchall()))
print(repr(out[0] == out[1]), repr(out))
"""


def test_an_int_adapter_registered_later_applies_to_known_statements():
    # In a child process: an adapter for int stays registered for the process's life.
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _ADAPTED_LATER], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("True"), res.stdout
