"""Differential tests: heliosdb's DB-API against the stdlib ``sqlite3`` of the running Python.

Every test takes ``mod`` (parametrized over ``sqlite3`` and ``heliosdb``). Most tests are
written as an *observation* ``obs(mod, path) -> plain data`` run through :func:`same`:

* for ``mod = sqlite3`` the observation runs alone (it checks the test itself against the
  stdlib, including the direct assertions inside it);
* for ``mod = heliosdb`` it runs on heliosdb and on sqlite3 (each in its own directory) and
  the two outcomes must be equal. An outcome is the returned value, or the exception raised
  as ``("raise", class name, PEP 249 classes of *that module* it is an instance of, message)``.

This file: module globals, the exception tree and error codes, ``connect``, transactions,
cursors, parameters, value types, ``close``, the context manager and ``check_same_thread``.
Callbacks, factories, adapters, ``iterdump`` and ``backup`` are in
``test_dbapi_callbacks.py``.
"""
from __future__ import annotations

import datetime
import inspect
import os
import sqlite3
import sys
import threading
import types

import pytest

from helpers.dbapi import (  # noqa: F401 - `mod` is a fixture
    PEP249, SQLITE3_311, attempt, db, error_codes, load, mod, outcome, plain, same,
    same_since, signature)


# --------------------------------------------------------------------------------------
# module globals
# --------------------------------------------------------------------------------------

GLOBALS = ["apilevel", "threadsafety", "paramstyle", "sqlite_version", "sqlite_version_info",
           "version", "Binary", "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks",
           "TimestampFromTicks", "PARSE_DECLTYPES", "PARSE_COLNAMES", "register_adapter",
           "register_converter", "complete_statement", "Row", "Connection", "Cursor",
           "PrepareProtocol", "connect", "adapt", "enable_callback_tracebacks",
           *PEP249]


@pytest.mark.parametrize("name", GLOBALS)
def test_module_global_exists(mod, name):
    assert hasattr(mod, name), f"{mod.__name__}.{name} is missing"


def test_module_constants(mod):
    assert mod.apilevel == "2.0"
    assert mod.paramstyle == "qmark"
    assert mod.PARSE_DECLTYPES == sqlite3.PARSE_DECLTYPES == 1
    assert mod.PARSE_COLNAMES == sqlite3.PARSE_COLNAMES == 2
    assert mod.threadsafety in (0, 1, 3)
    assert isinstance(mod.version, str)


def test_threadsafety_reflects_the_library(mod):
    # sqlite3 3.11+ derives threadsafety from its library's SQLITE_THREADSAFE (heliosdb
    # from APSW's SQLite); 3.10's says 1 whatever the library.
    if mod is sqlite3:
        assert sqlite3.threadsafety == (1 if sys.version_info < (3, 11) else 3)
        return
    import apsw
    opts = [o for o in apsw.compile_options if o.startswith("THREADSAFE=")]
    level = int(opts[0].split("=")[1]) if opts else 1
    expected = 1 if sys.version_info < (3, 11) else {0: 0, 1: 3, 2: 1}[level]
    assert mod.threadsafety == expected


def test_sqlite_version_is_the_library_in_use(mod):
    if mod is sqlite3:
        expected = sqlite3.connect(":memory:").execute("select sqlite_version()").fetchone()[0]
    else:
        import apsw
        expected = apsw.sqlite_lib_version()
    assert mod.sqlite_version == expected
    assert mod.sqlite_version_info == tuple(int(p) for p in expected.split("."))
    con = mod.connect(":memory:")
    assert con.execute("select sqlite_version()").fetchone()[0] == mod.sqlite_version
    con.close()


def test_type_constructors(mod):
    assert mod.Binary is memoryview
    assert mod.Date is datetime.date
    assert mod.Time is datetime.time
    assert mod.Timestamp is datetime.datetime
    ticks = 1_700_000_000.5
    assert mod.DateFromTicks(ticks) == sqlite3.DateFromTicks(ticks)
    assert mod.TimeFromTicks(ticks) == sqlite3.TimeFromTicks(ticks)
    assert mod.TimestampFromTicks(ticks) == sqlite3.TimestampFromTicks(ticks)
    assert bytes(mod.Binary(b"\x00\x01")) == b"\x00\x01"


def test_sqlite_constants_match(mod):
    """SQLITE_DENY, SQLITE_IGNORE, authorizer action codes, result codes, limits."""
    names = [n for n in dir(sqlite3) if n.startswith("SQLITE_")]
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"missing constants: {missing}"
    wrong = {n: getattr(mod, n) for n in names if getattr(mod, n) != getattr(sqlite3, n)}
    assert not wrong, f"constants with other values than sqlite3: {wrong}"


def test_every_public_stdlib_name_exists(mod):
    names = [n for n in dir(sqlite3) if not n.startswith("_")
             and not isinstance(getattr(sqlite3, n), types.ModuleType) or n == "dbapi2"]
    missing = sorted(n for n in names if not hasattr(mod, n))
    assert not missing, f"{mod.__name__} lacks public sqlite3 names: {missing}"


@pytest.mark.parametrize("cls", ["Connection", "Cursor", "Row"])
def test_every_public_method_exists(mod, cls):
    names = [n for n in dir(getattr(sqlite3, cls)) if not n.startswith("_")]
    missing = sorted(n for n in names if not hasattr(getattr(mod, cls), n))
    assert not missing, f"{mod.__name__}.{cls} lacks: {missing}"


def test_dbapi2_submodule(mod):
    import importlib
    sub = importlib.import_module(mod.__name__ + ".dbapi2")
    assert sub.connect is mod.connect
    assert sub.Error is mod.Error
    assert sub.IntegrityError is mod.IntegrityError
    assert sub.Row is mod.Row
    assert sub.paramstyle == "qmark"
    # `from sqlite3 import dbapi2` style
    assert getattr(mod, "dbapi2") is sub


def test_heliosdb_does_not_import_stdlib_sqlite3():
    import subprocess
    code = ("import sys, heliosdb, heliosdb.dbapi2; c = heliosdb.connect(':memory:');"
            "c.execute('select 1').fetchall(); print('sqlite3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_complete_statement(mod):
    cases = ["select 1", "select 1;", "select 1; -- x", "create table t(x);",
             "create trigger r after insert on t begin select 1; end", "select 'a;",
             "select 'a;';", "", ";", "  ", "/* ; */"]
    assert [mod.complete_statement(s) for s in cases] == [
        sqlite3.complete_statement(s) for s in cases]
    assert mod.complete_statement("select 1;") is True
    assert mod.complete_statement("select 1") is False


# --------------------------------------------------------------------------------------
# the exception tree and error codes
# --------------------------------------------------------------------------------------

def test_exception_hierarchy(mod):
    def base_names(cls):
        return [b.__name__ for b in cls.__mro__ if b not in (object, BaseException)]
    for name in PEP249:
        assert base_names(getattr(mod, name)) == base_names(getattr(sqlite3, name)), name
    assert issubclass(mod.Error, Exception)
    assert issubclass(mod.Warning, Exception)
    assert not issubclass(mod.Warning, mod.Error)
    assert issubclass(mod.IntegrityError, mod.DatabaseError)
    assert issubclass(mod.InterfaceError, mod.Error)
    assert not issubclass(mod.InterfaceError, mod.DatabaseError)


def _errors(mod, path):
    out = {}

    def record(key, fn):
        try:
            fn()
            out[key] = "no error"
        except mod.Error as e:
            out[key] = signature(mod, e) + error_codes(e)

    con = mod.connect(db(path))
    con.execute("create table t(id integer primary key, u unique, n not null, c check (c > 0),"
                " p references t(id))")
    con.execute("insert into t values (1, 'a', 1, 1, null)")
    con.commit()
    record("unique", lambda: con.execute("insert into t(id, u, n) values (2, 'a', 1)"))
    record("primarykey", lambda: con.execute("insert into t(id, u, n) values (1, 'b', 1)"))
    record("notnull", lambda: con.execute("insert into t(id, n) values (3, null)"))
    record("check", lambda: con.execute("insert into t(id, n, c) values (4, 1, -1)"))
    con.rollback()
    con.execute("pragma foreign_keys = on")
    record("foreignkey", lambda: con.execute("insert into t(id, n, p) values (5, 1, 99)"))
    con.rollback()
    record("syntax", lambda: con.execute("selec 1"))
    record("nosuchtable", lambda: con.execute("select * from nope"))
    record("mismatch", lambda: con.execute("insert into t(id, n) values ('x', 1)"))
    con.rollback()
    # BUSY: another connection holds the write lock
    other = mod.connect(db(path), timeout=0)
    con.execute("insert into t(id, n) values (10, 1)")
    record("busy", lambda: other.execute("insert into t(id, n) values (11, 1)"))
    con.rollback()
    other.close()
    con.close()
    ro = mod.connect("file:" + db(path) + "?mode=ro", uri=True)
    record("readonly", lambda: ro.execute("insert into t(id, n) values (12, 1)"))
    ro.close()
    junk = path / "junk.db"
    junk.write_bytes(b"this is not a database, definitely not" * 200)
    record("notadb", lambda: mod.connect(str(junk)).execute("select * from sqlite_master"))
    record("cantopen", lambda: mod.connect(str(path / "no" / "such" / "dir.db")))
    record("isdir", lambda: mod.connect(str(path)).execute("select * from sqlite_master"))
    return out


def test_error_classes_and_codes(mod, tmp_path):
    out = same(_errors, mod, tmp_path)
    errs = out
    assert errs["unique"][1] == "IntegrityError"
    assert errs["unique"][3] == "UNIQUE constraint failed: t.u"
    assert errs["syntax"][1] == "OperationalError"
    assert errs["busy"][1:2] == ("OperationalError",) and errs["busy"][3] == "database is locked"
    assert errs["notadb"][1] == "DatabaseError"
    assert errs["cantopen"][1] == "OperationalError"
    if SQLITE3_311:  # the codes are compared with sqlite3's where it has them
        assert errs["unique"][-2:] == (sqlite3.SQLITE_CONSTRAINT_UNIQUE,
                                       "SQLITE_CONSTRAINT_UNIQUE")
        assert errs["notnull"][-1] == "SQLITE_CONSTRAINT_NOTNULL"
        assert errs["foreignkey"][-1] == "SQLITE_CONSTRAINT_FOREIGNKEY"
        assert errs["readonly"][-1] == "SQLITE_READONLY"


def test_heliosdb_errors_carry_sqlite_codes_on_every_python(tmp_path):
    """sqlite_errorcode / sqlite_errorname are 3.11's; heliosdb sets them on 3.10 too."""
    helios = load("heliosdb")
    con = helios.connect(db(tmp_path))
    con.execute("create table t(u unique, n not null)")
    con.execute("insert into t values (1, 1)")
    for sql, code, name in [("insert into t values (1, 2)", 2067, "SQLITE_CONSTRAINT_UNIQUE"),
                            ("insert into t values (2, null)", 1299, "SQLITE_CONSTRAINT_NOTNULL"),
                            ("selec 1", 1, "SQLITE_ERROR")]:
        with pytest.raises(helios.DatabaseError) as info:
            con.execute(sql)
        assert (info.value.sqlite_errorcode, info.value.sqlite_errorname) == (code, name), sql
    con.close()


def test_errors_not_from_sqlite_have_no_error_code(mod, tmp_path):
    con = mod.connect(":memory:")
    con.close()
    with pytest.raises(mod.ProgrammingError) as info:
        con.execute("select 1")
    assert getattr(info.value, "sqlite_errorcode", None) is None


def test_no_apsw_exception_escapes(mod, tmp_path):
    con = mod.connect(db(tmp_path))
    for sql in ["selec", "select * from nope", "insert into nope values (1)"]:
        with pytest.raises(mod.Error) as info:
            con.execute(sql)
        assert not type(info.value).__module__.startswith("apsw")
        assert type(info.value).__name__ == "OperationalError"


# --------------------------------------------------------------------------------------
# connect()
# --------------------------------------------------------------------------------------

def test_heliosdb_connect_signature():
    mod = load("heliosdb")
    params = inspect.signature(mod.connect).parameters
    expected = [("database", inspect.Parameter.empty), ("timeout", 5.0), ("detect_types", 0),
                ("isolation_level", ""), ("check_same_thread", True),
                ("factory", mod.Connection), ("cached_statements", 128), ("uri", False),
                ("key", None), ("config", None)]
    # sqlite3's parameters first, in order; then heliosdb's own, keyword-only
    # (key, config, and the audit session's audit_user / audit_context).
    assert [(n, p.default) for n, p in params.items()][:len(expected)] == expected
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY
               for p in list(params.values())[len(expected) - 2:])
    assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["config"].kind is inspect.Parameter.KEYWORD_ONLY
    con = mod.connect(":memory:", key=None, config=None)
    assert isinstance(con, mod.Connection)
    assert con.execute("select 1").fetchall() == [(1,)]
    con.close()


def _connect_variants(mod, path):
    out = []
    p = path / "a.db"
    con = mod.connect(p)  # path-like
    con.execute("create table t(x)")
    con.commit()
    con.close()
    out.append(os.path.exists(p))
    con = mod.connect(os.fsencode(str(p)))  # bytes path
    out.append(con.execute("select count(*) from sqlite_master").fetchone())
    con.close()
    if sys.version_info < (3, 13):  # positional arguments deprecated from 3.13
        con = mod.connect(str(p), 1.5, 0, None, True, mod.Connection, 16, False)
        out.append(con.isolation_level)
        con.close()
    con = mod.connect(database=str(p), timeout=0.0, detect_types=0, isolation_level="IMMEDIATE",
                      check_same_thread=False, cached_statements=0, uri=False)
    out.append(con.isolation_level)
    con.close()
    out.append(attempt(mod, lambda: mod.connect(str(p), isolation_level="BOGUS")))
    out.append(attempt(mod, lambda: mod.connect(str(p), timeout="x"), message=False))
    out.append(attempt(mod, lambda: mod.connect(), message=False))
    # (uri=False with a "file:" name is not compared: whether it is still read as a URI
    # depends on SQLITE_USE_URI in the build of the library, e.g. Debian's libsqlite3 sets it)
    # uri=True
    con = mod.connect(f"file:{p}?mode=ro", uri=True)
    out.append(con.execute("select name from sqlite_master").fetchall())
    out.append(attempt(mod, lambda: con.execute("insert into t values (1)")))
    con.close()
    con = mod.connect("file:memdb1?mode=memory&cache=shared", uri=True)
    con2 = mod.connect("file:memdb1?mode=memory&cache=shared", uri=True)
    con.execute("create table m(x)")
    out.append(con2.execute("select name from sqlite_master").fetchall())
    con.close()
    con2.close()
    # direct instantiation of the Connection class
    con = mod.Connection(str(p))
    out.append((type(con).__name__, con.execute("select 1").fetchone()))
    con.close()
    return out


def test_connect_variants(mod, tmp_path):
    same(_connect_variants, mod, tmp_path)


def test_connect_returns_connection(mod):
    con = mod.connect(":memory:")
    assert isinstance(con, mod.Connection)
    assert type(con) is mod.Connection
    con.close()


def test_connect_factory_subclass(mod, tmp_path):
    class MyConnection(mod.Connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.marker = "mine"

        def answer(self):
            return self.execute("select 42").fetchone()[0]

    con = mod.connect(db(tmp_path), factory=MyConnection)
    assert type(con) is MyConnection and isinstance(con, mod.Connection)
    assert con.marker == "mine" and con.answer() == 42
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    assert con.in_transaction
    con.commit()
    con.close()


def test_connect_to_memory_is_private(mod):
    a, b = mod.connect(":memory:"), mod.connect(":memory:")
    a.execute("create table t(x)")
    assert b.execute("select count(*) from sqlite_master").fetchone() == (0,)
    a.close()
    b.close()


# --------------------------------------------------------------------------------------
# transactions
# --------------------------------------------------------------------------------------

def _implicit_transactions(mod, path, level):
    out = []
    con = mod.connect(db(path), isolation_level=level)
    other = mod.connect(db(path), timeout=0)
    trace = []
    con.set_trace_callback(trace.append)
    out.append(("level", con.isolation_level, con.in_transaction))
    con.execute("create table t(x)")
    out.append(("after DDL", con.in_transaction))
    # `other` learns the schema now: an audited connection has read it at open already
    # (its log lives there), and a stale schema answers "no such table" where a fresh
    # read answers "database is locked" while `con` holds an EXCLUSIVE lock.
    other.execute("select count(*) from sqlite_master").fetchall()
    con.execute("select * from t").fetchall()
    out.append(("after SELECT", con.in_transaction))
    con.execute("insert into t values (1)")
    out.append(("after INSERT", con.in_transaction))
    out.append(("other reads", attempt(mod, lambda: other.execute("select count(*) from t").fetchall())))
    out.append(("other writes", attempt(mod, lambda: other.execute("insert into t values (9)"))))
    out.append(("other in_transaction", other.in_transaction))
    other.rollback()  # its implicit BEGIN succeeded and holds a read lock
    con.commit()
    out.append(("after commit", con.in_transaction,
                other.execute("select count(*) from t").fetchall()))
    for sql in ["update t set x = 2", "delete from t", "replace into t values (3)",
                "insert or replace into t values (4)", "  \n INSERT into t values (5)",
                "with q as (select 6) insert into t select * from q",
                "-- comment\ninsert into t values (7)", "/* c */ insert into t values (8)",
                "pragma user_version = 3", "create index i on t(x)", "drop index i",
                "select 1", "values (1)"]:
        con.execute(sql).fetchall()
        out.append((sql, con.in_transaction))
        con.commit()
    con.set_trace_callback(None)
    out.append(("trace", trace))
    other.close()
    con.close()
    return out


@pytest.mark.parametrize("level", ["", "DEFERRED", "IMMEDIATE", "EXCLUSIVE", "deferred"])
def test_implicit_transactions(mod, tmp_path, level):
    out = same(lambda m, p: _implicit_transactions(m, p, level), mod, tmp_path)
    assert ("after DDL", False) in out
    assert ("after SELECT", False) in out
    assert ("after INSERT", True) in out


def _autocommit(mod, path):
    out = []
    con = mod.connect(db(path), isolation_level=None)
    other = mod.connect(db(path))
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    out.append((con.in_transaction, other.execute("select count(*) from t").fetchone()))
    con.execute("begin")
    out.append(con.in_transaction)
    con.execute("insert into t values (2)")
    out.append(other.execute("select count(*) from t").fetchone())
    con.commit()
    out.append((con.in_transaction, other.execute("select count(*) from t").fetchone()))
    con.execute("begin immediate")
    con.execute("insert into t values (3)")
    con.rollback()
    out.append((con.in_transaction, con.execute("select count(*) from t").fetchone()))
    con.execute("savepoint s1")
    out.append(con.in_transaction)
    con.execute("insert into t values (4)")
    con.execute("release s1")
    out.append((con.in_transaction, other.execute("select count(*) from t").fetchone()))
    con.close()
    other.close()
    return out


def test_autocommit_with_isolation_level_none(mod, tmp_path):
    out = same(_autocommit, mod, tmp_path)
    assert out[0] == (False, (1,))


def _change_isolation_level(mod, path):
    out = []
    con = mod.connect(db(path))
    other = mod.connect(db(path))
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    con.isolation_level = "IMMEDIATE"
    out.append((con.isolation_level, con.in_transaction))
    con.isolation_level = None  # commits
    out.append((con.isolation_level, con.in_transaction,
                other.execute("select count(*) from t").fetchone()))
    con.execute("insert into t values (2)")
    out.append(con.in_transaction)
    con.isolation_level = "EXCLUSIVE"
    trace = []
    con.set_trace_callback(trace.append)
    con.execute("insert into t values (3)")
    out.append((con.in_transaction, trace))
    con.rollback()
    out.append(attempt(mod, lambda: setattr(con, "isolation_level", "SERIALIZABLE")))
    out.append(attempt(mod, lambda: setattr(con, "isolation_level", 1)))
    out.append(attempt(mod, lambda: delattr(con, "isolation_level"), message=False))
    out.append(attempt(mod, lambda: setattr(con, "in_transaction", True), message=False))
    out.append(con.isolation_level)
    con.close()
    other.close()
    return out


def test_changing_isolation_level(mod, tmp_path):
    same(_change_isolation_level, mod, tmp_path)


def _commit_rollback(mod, path):
    out = []
    con = mod.connect(db(path))
    con.commit()
    con.rollback()  # no transaction: both are no-ops
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    con.rollback()
    out.append(con.execute("select count(*) from t").fetchone())
    con.execute("insert into t values (1)")
    con.commit()
    con.execute("insert into t values (2)")
    out.append(attempt(mod, lambda: con.execute("begin")))
    con.rollback()
    out.append(con.execute("select * from t").fetchall())
    # explicit BEGIN with the default isolation level
    con.execute("begin")
    out.append(con.in_transaction)
    con.execute("insert into t values (3)")
    con.commit()
    out.append((con.in_transaction, con.execute("select count(*) from t").fetchone()))
    # a cursor with pending rows does not prevent commit or rollback
    cur = con.execute("select x from t")
    cur.fetchone()
    con.execute("insert into t values (4)")
    con.rollback()
    out.append(attempt(mod, cur.fetchall))
    con.close()
    return out


def test_commit_and_rollback(mod, tmp_path):
    same(_commit_rollback, mod, tmp_path)


def _total_changes(mod, path):
    con = mod.connect(db(path))
    out = [con.total_changes]
    con.execute("create table t(x)")
    out.append(con.total_changes)
    con.executemany("insert into t values (?)", [(i,) for i in range(5)])
    out.append(con.total_changes)
    con.execute("update t set x = x + 1 where x < 3")
    out.append(con.total_changes)
    con.rollback()
    out.append(con.total_changes)
    con.executescript("insert into t values (1); insert into t values (2); delete from t;")
    out.append(con.total_changes)
    con.close()
    return out


def test_total_changes(mod, tmp_path):
    out = same(_total_changes, mod, tmp_path)
    assert out[:4] == [0, 0, 5, 8]


def _two_connections(mod, path):
    a = mod.connect(db(path))
    b = mod.connect(db(path))
    a.execute("create table t(x)")
    a.execute("insert into t values ('uncommitted')")
    before = b.execute("select * from t").fetchall()
    a.commit()
    after = b.execute("select * from t").fetchall()
    a.close()
    b.close()
    return before, after


def test_second_connection_sees_only_committed_data(mod, tmp_path):
    assert same(_two_connections, mod, tmp_path) == ([], [("uncommitted",)])


def _close_rolls_back(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    con.commit()
    con.execute("insert into t values (2)")
    con.close()
    con = mod.connect(db(path))
    rows = con.execute("select * from t").fetchall()
    con.close()
    return rows


def test_close_with_open_transaction_rolls_back(mod, tmp_path):
    assert same(_close_rolls_back, mod, tmp_path) == [(1,)]


# --------------------------------------------------------------------------------------
# close semantics
# --------------------------------------------------------------------------------------

def _closed_connection(mod, path):
    con = mod.connect(db(path))
    cur = con.cursor()
    con.close()
    con.close()  # twice is fine
    other = mod.connect(":memory:")
    ops = {
        "execute": lambda: con.execute("select 1"),
        "executemany": lambda: con.executemany("insert into t values (?)", [(1,)]),
        "executescript": lambda: con.executescript("select 1"),
        "cursor": con.cursor,
        "commit": con.commit,
        "rollback": con.rollback,
        "in_transaction": lambda: con.in_transaction,
        "total_changes": lambda: con.total_changes,
        "isolation_level": lambda: con.isolation_level,
        "create_function": lambda: con.create_function("f", 1, len),
        "create_aggregate": lambda: con.create_aggregate("a", 1, object),
        "create_collation": lambda: con.create_collation("c", lambda a, b: 0),
        "set_authorizer": lambda: con.set_authorizer(None),
        "set_progress_handler": lambda: con.set_progress_handler(None, 1),
        "set_trace_callback": lambda: con.set_trace_callback(None),
        "iterdump": lambda: list(con.iterdump()),
        "interrupt": con.interrupt,
        "backup": lambda: con.backup(other),
        "backup_into_closed": lambda: other.backup(con),
        "enter": con.__enter__,
        "row_factory": lambda: con.row_factory,
        "text_factory": lambda: con.text_factory,
        "cursor.execute": lambda: cur.execute("select 1"),
        "cursor.fetchone": cur.fetchone,
        "cursor.fetchall": cur.fetchall,
        "cursor.close": cur.close,
        "cursor.connection": lambda: cur.connection is con,
    }
    out = {name: attempt(mod, fn) for name, fn in ops.items()}
    other.close()
    return out


def test_closed_connection(mod, tmp_path):
    out = same(_closed_connection, mod, tmp_path)
    closed = ("raise", "ProgrammingError", ("Error", "DatabaseError", "ProgrammingError"),
              "Cannot operate on a closed database.")
    for name in ["execute", "cursor", "commit", "rollback", "in_transaction", "total_changes",
                 "create_function", "iterdump", "cursor.execute"]:
        assert out[name] == closed, name
    # 3.10's sqlite3 enters a closed connection (its first use raises); 3.11+ refuses.
    assert out["enter"] == (closed if SQLITE3_311 else ("ok", "<Connection>"))


def _closed_cursor(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(x)")
    cur = con.cursor()
    cur.execute("select 1")
    cur.close()
    cur.close()
    ops = {
        "execute": lambda: cur.execute("select 1"),
        "executemany": lambda: cur.executemany("insert into t values (?)", [(1,)]),
        "executescript": lambda: cur.executescript("select 1"),
        "fetchone": cur.fetchone,
        "fetchmany": cur.fetchmany,
        "fetchall": cur.fetchall,
        "iterate": lambda: list(cur),
        "next": lambda: next(cur),
        "rowcount": lambda: cur.rowcount,
        "connection": lambda: cur.connection is con,
        "arraysize": lambda: cur.arraysize,
    }
    out = {name: attempt(mod, fn) for name, fn in ops.items()}
    out["connection still works"] = con.execute("select 2").fetchall()
    con.close()
    return out


def test_closed_cursor(mod, tmp_path):
    out = same(_closed_cursor, mod, tmp_path)
    closed = ("raise", "ProgrammingError", ("Error", "DatabaseError", "ProgrammingError"),
              "Cannot operate on a closed cursor.")
    for name in ["execute", "executemany", "executescript", "fetchone", "fetchall", "iterate"]:
        assert out[name] == closed, name


# --------------------------------------------------------------------------------------
# context manager
# --------------------------------------------------------------------------------------

def _context_manager(mod, path):
    out = []
    con = mod.connect(db(path))
    other = mod.connect(db(path))
    con.execute("create table t(x unique)")
    with con as entered:
        out.append(entered is con)
        con.execute("insert into t values (1)")
    out.append((con.in_transaction, other.execute("select * from t").fetchall()))
    try:
        with con:
            con.execute("insert into t values (2)")
            raise KeyError("boom")
    except KeyError as e:
        out.append(("reraised", str(e)))
    out.append((con.in_transaction, con.execute("select * from t").fetchall()))
    try:
        with con:
            con.execute("insert into t values (3)")
            con.execute("insert into t values (1)")
    except mod.IntegrityError as e:
        out.append(("integrity", str(e)))
    out.append(con.execute("select * from t").fetchall())
    # the connection stays open after the with block
    out.append(con.execute("select 7").fetchone())
    # the with block returns False: exceptions are not swallowed
    out.append(con.__exit__(None, None, None))
    with con:
        pass  # nothing to commit
    con.close()
    other.close()
    return out


def test_context_manager(mod, tmp_path):
    out = same(_context_manager, mod, tmp_path)
    assert out[0] is True
    assert out[1] == (False, [(1,)])
    assert out[3] == (False, [(1,)])


# --------------------------------------------------------------------------------------
# check_same_thread
# --------------------------------------------------------------------------------------

def in_thread(mod, fn):
    box = []

    def run():
        box.append(attempt(mod, fn, message=False))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box[0]


def _threads(mod, path):
    out = {}
    con = mod.connect(db(path))
    con.execute("create table t(x)")
    con.commit()
    cur = con.execute("select 1")
    out["execute"] = in_thread(mod, lambda: con.execute("select 1").fetchall())
    out["cursor"] = in_thread(mod, con.cursor)
    out["commit"] = in_thread(mod, con.commit)
    out["fetch from cursor"] = in_thread(mod, cur.fetchall)
    out["close"] = in_thread(mod, con.close)
    out["in_transaction"] = in_thread(mod, lambda: con.in_transaction)
    out["still usable here"] = con.execute("select 2").fetchall()
    con.close()

    free = mod.connect(db(path), check_same_thread=False)
    out["free execute"] = in_thread(mod, lambda: free.execute("insert into t values (1)").rowcount)
    out["free commit"] = in_thread(mod, free.commit)
    out["free select"] = in_thread(mod, lambda: free.execute("select * from t").fetchall())
    out["free close"] = in_thread(mod, free.close)
    return out


def test_check_same_thread(mod, tmp_path):
    out = same(_threads, mod, tmp_path)
    assert out["execute"][1] == "ProgrammingError"
    assert out["free select"] == ("ok", [(1,)])


def test_check_same_thread_message(mod):
    con = mod.connect(":memory:")
    res = in_thread(mod, lambda: con.execute("select 1"))
    assert res[1] == "ProgrammingError"
    try:
        box = []
        t = threading.Thread(target=lambda: box.append(attempt(mod, lambda: con.cursor())))
        t.start()
        t.join()
        assert box[0][3].startswith(
            "SQLite objects created in a thread can only be used in that same thread.")
    finally:
        con.close()


# --------------------------------------------------------------------------------------
# cursors: execute, rowcount, lastrowid, description, fetch
# --------------------------------------------------------------------------------------

def _rowcount_lastrowid(mod, path):
    con = mod.connect(db(path))
    cur = con.cursor()
    out = [("fresh", cur.rowcount, cur.lastrowid, cur.description, cur.arraysize)]

    def step(label, sql, params=(), many=False):
        if many:
            cur.executemany(sql, params)
        else:
            cur.execute(sql, params)
        out.append((label, cur.rowcount, cur.lastrowid, cur.description))

    step("create", "create table t(id integer primary key, x)")
    step("insert", "insert into t(x) values (?)", ("a",))
    step("insert2", "insert into t(x) values (?)", ("b",))
    step("update", "update t set x = x || '!'")
    step("update none", "update t set x = 1 where 0")
    step("many", "insert into t(x) values (?)", [("c",), ("d",), ("e",)], many=True)
    step("many empty", "insert into t(x) values (?)", [], many=True)
    step("delete", "delete from t where id > 3")
    step("select", "select * from t")
    rows = cur.fetchall()
    out.append(("after fetch", rows, cur.rowcount, cur.description))
    step("select none", "select * from t where 0")
    step("replace", "replace into t values (1, 'z')")
    step("insert select", "insert into t(x) select x from t")
    step("upsert", "insert into t values (1, 'q') on conflict(id) do update set x = 'up'")
    step("returning", "insert into t(x) values ('r') returning id, x")
    out.append(("returning rows", cur.fetchall(), cur.rowcount, cur.description))
    step("delete all", "delete from t")
    step("pragma", "pragma user_version")
    out.append(("pragma rows", cur.fetchall()))
    step("drop", "drop table t")
    step("failed insert", "create table u(x unique)")
    cur.execute("insert into u values (1)")
    out.append(("u", cur.rowcount, cur.lastrowid))
    out.append(attempt(mod, lambda: cur.execute("insert into u values (1)")))
    out.append(("after failure", cur.rowcount, cur.lastrowid))
    cur.executescript("insert into u values (5); insert into u values (6);")
    out.append(("script", cur.rowcount, cur.lastrowid))
    other = con.cursor()
    out.append(("other cursor", other.lastrowid, other.rowcount))
    con.close()
    return out


def test_rowcount_lastrowid_description(mod, tmp_path):
    out = same(_rowcount_lastrowid, mod, tmp_path)
    assert out[0] == ("fresh", -1, None, None, 1)
    by_label = {o[0]: o for o in out if isinstance(o, tuple) and isinstance(o[0], str)}
    assert by_label["create"][1] == -1
    assert by_label["insert2"][1:3] == (1, 2)
    assert by_label["update"][1] == 2
    assert by_label["many"][1] == 3
    assert by_label["select"][1] == -1
    assert by_label["select"][3] == (("id", None, None, None, None, None, None),
                                     ("x", None, None, None, None, None, None))
    assert by_label["select none"][3] is not None


def _description(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(a integer, \"b c\" text, d)")
    con.execute("insert into t values (1, 'x', null)")
    out = []
    for sql in ["select * from t", "select a as alias, a + 1, count(*) from t",
                "select 1 as \"x [int]\"", "select t.a from t", "select * from t where 0",
                "select a, a from t", "insert into t values (2, 'y', 3)", "create table u(x)",
                "select \"b c\" from t"]:
        cur = con.execute(sql)
        out.append((sql, cur.description))
        cur.fetchall()
        out.append((sql, "after fetchall", cur.description))
    # description first read only after all rows were fetched (DESIGN.md: APSW drops a
    # statement's description once it finishes)
    for sql in ["select a from t", "select * from t where 0",
                "insert into t values (7, 'r', null) returning a, \"b c\"",
                "update t set d = 1 returning d", "delete from t where a = 7 returning *",
                "pragma table_info(t)", "values (1, 2)"]:
        cur = con.execute(sql)
        rows = cur.fetchall()
        out.append((sql, "read late", rows, cur.description))
    cur = con.execute("select a from t")
    cur.fetchone()
    cur.fetchone()
    cur.fetchone()  # exhausted
    out.append(("exhausted", cur.description))
    cur.execute("update t set a = 5")
    out.append(("DML resets", cur.description))
    out.append(attempt(mod, lambda: setattr(cur, "description", 1), message=False))
    con.close()
    return out


def test_description(mod, tmp_path):
    same(_description, mod, tmp_path)


def _fetching(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(x)")
    con.executemany("insert into t values (?)", [(i,) for i in range(10)])
    out = []
    cur = con.cursor()
    out.append(cur.execute("select x from t order by x") is cur)
    out.append(cur.fetchone())
    out.append(cur.fetchmany())
    out.append(cur.fetchmany(3))
    cur.arraysize = 2
    out.append(cur.fetchmany())
    out.append(cur.fetchmany(size=1))
    out.append(cur.fetchall())
    out.append((cur.fetchone(), cur.fetchmany(), cur.fetchall()))
    cur.execute("select x from t order by x")
    out.append(next(cur))
    out.append(iter(cur) is cur)
    out.append([r for r in cur][:3])
    out.append(attempt(mod, lambda: next(cur)))
    out.append([r for r in con.execute("select x from t where x < 3 order by x")])
    cur.execute("select x from t order by x")
    out.append(cur.fetchmany(0))
    out.append(cur.fetchmany(-1))
    out.append(len(cur.fetchall()))
    out.append(attempt(mod, lambda: setattr(cur, "arraysize", "x"), message=False))
    # a new execute on the same cursor discards the old rows
    cur.execute("select 1")
    cur.execute("select 2 union all select 3")
    out.append(cur.fetchall())
    # fetch on a cursor that never executed
    fresh = con.cursor()
    out.append((fresh.fetchone(), fresh.fetchall(), fresh.fetchmany()))
    # fetch after a DML statement
    cur.execute("delete from t where x = 9")
    out.append((cur.fetchone(), cur.fetchall()))
    # con.execute returns a new cursor each time
    c1, c2 = con.execute("select 1"), con.execute("select 1")
    out.append((c1 is c2, type(c1).__name__, isinstance(c1, mod.Cursor), c1.connection is con))
    out.append(con.cursor().connection is con)
    out.append(cur.executemany("insert into t values (?)", [(1,)]) is cur)
    out.append(cur.executescript("select 1") is cur)
    out.append(type(con.executemany("insert into t values (?)", [(1,)])).__name__)
    out.append(type(con.executescript("select 1")).__name__)
    # setinputsizes / setoutputsizes are no-ops
    out.append((cur.setinputsizes([1, 2]), cur.setoutputsize(10), cur.setoutputsize(10, 0)))
    con.close()
    return out


def test_fetching_and_iteration(mod, tmp_path):
    out = same(_fetching, mod, tmp_path)
    assert out[0] is True
    assert out[1] == (0,) and out[2] == [(1,)] and out[3] == [(2,), (3,), (4,)]


def _cursor_factory(mod, path):
    class MyCursor(mod.Cursor):
        def first(self, sql):
            return self.execute(sql).fetchone()[0]

    con = mod.connect(db(path))
    cur = con.cursor(factory=MyCursor)
    out = [type(cur).__name__, isinstance(cur, mod.Cursor), cur.first("select 5"),
           cur.connection is con]
    out.append(attempt(mod, lambda: con.cursor(factory=int), message=False))
    out.append(attempt(mod, lambda: con.cursor(factory=lambda c: object()), message=False))
    cur2 = mod.Cursor(con)  # direct construction
    out.append(cur2.execute("select 6").fetchone())
    con.close()
    return out


def test_cursor_factory(mod, tmp_path):
    out = same(_cursor_factory, mod, tmp_path)
    assert out[:4] == ["MyCursor", True, 5, True]


# --------------------------------------------------------------------------------------
# executemany, executescript, multiple statements
# --------------------------------------------------------------------------------------

def _executemany(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(x, y)")
    out = []

    def gen():
        for i in range(4):
            yield (i, str(i))

    cur = con.executemany("insert into t values (?, ?)", gen())
    out.append(cur.rowcount)
    cur = con.executemany("insert into t values (?, ?)", iter([(10, "a"), (11, "b")]))
    out.append(cur.rowcount)
    cur = con.executemany("insert into t values (:x, :y)", [{"x": 20, "y": "n"}])
    out.append(cur.rowcount)
    cur = con.executemany("update t set y = ? where x < ?", [("u", 2), ("v", 1)])
    out.append(cur.rowcount)
    out.append(con.execute("select * from t order by x").fetchall())
    out.append(attempt(mod, lambda: con.executemany("select ?", [(1,), (2,)])))
    out.append(attempt(mod, lambda: con.executemany("create table u(x)", [()]).rowcount))
    out.append(attempt(mod, lambda: con.executemany("insert into t values (?, ?)", [(1,)])))
    out.append(attempt(mod, lambda: con.executemany("insert into t values (?, ?)", 5), message=False))
    out.append(attempt(mod, lambda: con.executemany("insert into t values (?, ?)",
                                                    [(1, 2), (3, object())])))
    out.append(con.execute("select count(*) from t").fetchone())

    def failing():
        yield (100, "ok")
        raise ZeroDivisionError("from the generator")

    out.append(attempt(mod, lambda: con.executemany("insert into t values (?, ?)", failing())))
    out.append(con.execute("select count(*) from t where x = 100").fetchone())
    out.append(attempt(mod, lambda: con.executemany(
        "insert into t values (1, 2); insert into t values (3, 4)", [()])))
    con.close()
    return out


def test_executemany(mod, tmp_path):
    out = same(_executemany, mod, tmp_path)
    assert out[:4] == [4, 2, 1, 3]
    assert out[5][1] == "ProgrammingError"


def _executescript(mod, path):
    out = []
    con = mod.connect(db(path))
    other = mod.connect(db(path))
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    assert con.in_transaction
    trace = []
    con.set_trace_callback(trace.append)
    con.executescript("insert into t values (2);")
    con.set_trace_callback(None)
    out.append(("committed first", other.execute("select * from t").fetchall(),
                con.in_transaction, trace))
    con.executescript("""
        -- a comment
        create table u(y);
        insert into u values ('a;b');
        begin;
        insert into u values ('in tx');
    """)
    out.append(("script left tx open", con.in_transaction))
    con.rollback()
    out.append(con.execute("select * from u").fetchall())
    out.append(attempt(mod, lambda: con.executescript(
        "insert into u values (1); selec 2; insert into u values (3);")))
    out.append(con.execute("select * from u").fetchall())
    out.append(attempt(mod, lambda: con.executescript(b"select 1"), message=False))
    cur = con.cursor()
    out.append(cur.executescript("") is cur)
    con.isolation_level = None
    con.executescript("insert into u values ('auto')")
    out.append(other.execute("select count(*) from u").fetchone())
    con.close()
    other.close()
    return out


def test_executescript(mod, tmp_path):
    out = same(_executescript, mod, tmp_path)
    assert out[0][1] == [(1,), (2,)]


def _one_statement(mod, path):
    con = mod.connect(db(path))
    out = []
    for sql in ["select 1; select 2", "select 1;", "select 1;   ", "select 1; -- trailing",
                "select 1; /* trailing */", "select 1;;", "", "   ", "-- only a comment",
                "create table t(x); insert into t values (1)", ";"]:
        out.append((sql, attempt(mod, lambda: con.execute(sql).fetchall())))
    out.append(con.execute("select count(*) from sqlite_master").fetchone())
    con.close()
    return out


def test_one_statement_at_a_time(mod, tmp_path):
    out = same(_one_statement, mod, tmp_path)
    msg = "You can only execute one statement at a time."
    if SQLITE3_311:
        assert out[0][1] == ("raise", "ProgrammingError",
                             ("Error", "DatabaseError", "ProgrammingError"), msg)
    else:  # 3.10's sqlite3 raises its Warning
        assert out[0][1] == ("raise", "Warning", ("Warning",), msg)


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------

class _DictWithMissing(dict):
    def __missing__(self, key):
        return "missing:" + key


def _parameters(mod, path):
    import collections
    import collections.abc

    class Mapping(collections.abc.Mapping):
        def __init__(self, d):
            self.d = d

        def __getitem__(self, k):
            return self.d[k]

        def __len__(self):
            return len(self.d)

        def __iter__(self):
            return iter(self.d)

    con = mod.connect(db(path))
    out = []

    def q(sql, params=None):
        if params is None:
            return attempt(mod, lambda: con.execute(sql).fetchall())
        return attempt(mod, lambda: con.execute(sql, params).fetchall())

    out.append(q("select ?, ?", (1, "a")))
    out.append(q("select ?, ?", [1, "a"]))
    out.append(q("select ?1, ?2, ?1", (1, 2)))
    out.append(q("select :a, :b, :a", {"a": 1, "b": 2}))
    out.append(q("select @a, $b", {"a": 1, "b": 2}))
    out.append(q("select :a", {"a": 1, "unused": 2}))
    out.append(q("select :a", _DictWithMissing()))
    out.append(q("select :a", collections.OrderedDict(a=3)))
    out.append(q("select :a", collections.defaultdict(int)))
    out.append(q("select :a", Mapping({"a": 4})))
    out.append(q("select :a", {"b": 1}))
    out.append(q("select ?", (1, 2)))
    out.append(q("select ?, ?", (1,)))
    out.append(q("select ?"))
    out.append(q("select 1", (1,)))
    out.append(q("select ?", 5))
    out.append(q("select ?", "ab"))
    out.append(q("select ?", {"a": 1}))
    out.append(q("select ?", (object(),)))
    out.append(q("select ?, ?", (1, object())))
    out.append(q("select ?", ([1],)))
    out.append(q("select ?", ({},)))
    out.append(q("select ?", (1j,)))
    if sys.version_info < (3, 12):  # 3.12+: DeprecationWarning, 3.14: error
        out.append(q("select :a", (7,)))
    out.append(q("select ?", ((x for x in [1]),)))
    con.close()
    return out


def test_parameters(mod, tmp_path):
    out = same(_parameters, mod, tmp_path)
    assert out[0] == ("ok", [(1, "a")])
    assert out[11][1] == "ProgrammingError"  # wrong number of bindings
    if SQLITE3_311:
        assert out[18] == ("raise", "ProgrammingError",
                           ("Error", "DatabaseError", "ProgrammingError"),
                           "Error binding parameter 1: type 'object' is not supported")
    else:  # 3.10: InterfaceError, parameters counted from 0
        assert out[18] == ("raise", "InterfaceError", ("Error", "InterfaceError"),
                           "Error binding parameter 0 - probably unsupported type.")


# --------------------------------------------------------------------------------------
# value types
# --------------------------------------------------------------------------------------

def _undecodable_text(mod, path):
    con = mod.connect(db(path))
    out = []
    # (3.10's sqlite3 reads the first row inside execute(), 3.11+ at the fetch)
    for fetch in ("fetchone", "fetchall"):
        out.append(attempt(mod, lambda: getattr(
            con.execute("select 'xxx' || ? || 'yyy' colname", (b"\xfa",)), fetch)()))
    con.row_factory = mod.Row
    out.append(attempt(mod, lambda: con.execute("select 'a' || ? as c", (b"\xff",)).fetchone()))
    con.close()
    return out


def test_undecodable_text_names_its_column(mod, tmp_path):
    """sqlite3 names the column and shows the text (U+FFFD for the bad bytes)."""
    out = same(_undecodable_text, mod, tmp_path)
    assert out[0] == ("raise", "OperationalError", ("Error", "DatabaseError", "OperationalError"),
                      "Could not decode to UTF-8 column 'colname' with text 'xxx\ufffdyyy'")


def _values(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(v)")
    out = []
    values = [None, 0, 1, -1, 2**63 - 1, -2**63, 1.5, -0.0, float("inf"), float("-inf"),
              float("nan"), "", "text", "ünïcödé ✓", "with\x00nul", b"", b"\x00\xff",
              bytearray(b"ba"), memoryview(b"mv"), True, False, 10**18]
    for v in values:
        res = attempt(mod, lambda: con.execute("select ?, typeof(?)", (v, v)).fetchone())
        out.append((repr(v) if not isinstance(v, (bytearray, memoryview)) else type(v).__name__,
                    res if not (isinstance(v, float) and v != v) else res))
        con.execute("insert into t values (?)", (v,))
    out.append([(type(r[0]).__name__, r[0] if r[0] == r[0] else "nan")
                for r in con.execute("select v from t")])
    for big in (2**63, -2**63 - 1, 2**100):
        out.append(attempt(mod, lambda: con.execute("select ?", (big,))))
    out.append(attempt(mod, lambda: con.execute("select 9223372036854775807 + 1").fetchone()))
    out.append(con.execute("select 1e400, -1e400, 0.1 + 0.2").fetchone())
    out.append(con.execute("select x'00ff', null, 'a' || 'b', 7 / 2, 7.0 / 2").fetchone())
    con.close()
    return out


def test_values_round_trip(mod, tmp_path):
    out = same(_values, mod, tmp_path)
    assert ("None", ("ok", (None, "null"))) in out


def _large_values(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(b blob, s text)")
    blob = bytes(range(256)) * 40_000  # 10 MB
    text = "héllo wörld " * 200_000
    con.execute("insert into t values (?, ?)", (blob, text))
    con.commit()
    b, s = con.execute("select b, s from t").fetchone()
    out = [type(b).__name__, b == blob, s == text, len(b), len(s)]
    out.append(con.execute("select length(b), length(s) from t").fetchone())
    out.append(con.execute("select length(zeroblob(1000000))").fetchone())
    zb = con.execute("select zeroblob(5)").fetchone()[0]
    out.append((type(zb).__name__, zb))
    con.close()
    return out


def test_large_values(mod, tmp_path):
    out = same(_large_values, mod, tmp_path)
    assert out[:3] == ["bytes", True, True]


# --------------------------------------------------------------------------------------
# errors inside a transaction, savepoints
# --------------------------------------------------------------------------------------

def _errors_in_transaction(mod, path):
    con = mod.connect(db(path))
    other = mod.connect(db(path))
    con.execute("create table u(x unique)")
    con.execute("insert into u values (1)")
    out = [attempt(mod, lambda: con.execute("insert into u values (1)"))]
    out.append(con.in_transaction)  # a failed statement does not end the transaction
    con.execute("insert into u values (2)")
    con.commit()
    out.append(other.execute("select * from u order by x").fetchall())
    out.append(attempt(mod, lambda: con.execute("insert into u values (3), (2)")))
    out.append((con.in_transaction, con.execute("select count(*) from u").fetchone()))
    con.rollback()
    con.execute("savepoint a")
    out.append(con.in_transaction)
    con.execute("insert into u values (10)")
    con.execute("rollback to a")
    con.execute("insert into u values (11)")
    con.execute("release a")
    out.append((con.in_transaction, other.execute("select * from u order by x").fetchall()))
    con.execute("insert into u values (12)")
    con.execute("savepoint b")
    con.execute("insert into u values (13)")
    con.rollback()
    out.append((con.in_transaction, con.execute("select * from u order by x").fetchall()))
    out.append(attempt(mod, lambda: con.execute("release nope")))
    out.append(attempt(mod, lambda: con.execute("commit")))
    con.close()
    other.close()
    return out


def test_errors_in_transactions_and_savepoints(mod, tmp_path):
    out = same(_errors_in_transaction, mod, tmp_path)
    assert out[0][1] == "IntegrityError" and out[1] is True


# --------------------------------------------------------------------------------------
# newer Connection APIs of the stdlib (3.11): blobopen, limits, serialize, window functions
# --------------------------------------------------------------------------------------

def _blobs(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(id integer primary key, b blob)")
    con.execute("insert into t values (1, zeroblob(10))")
    con.commit()
    out = []
    with con.blobopen("t", "b", 1) as blob:
        out.append((len(blob), blob.read(3), blob.tell()))
        blob.write(b"abc")
        blob.seek(0)
        out.append((blob.read(), blob[0], blob[0:2], blob.tell()))
        blob.seek(-2, 2)
        out.append(blob.read())
        out.append(attempt(mod, lambda: blob.write(b"x" * 20)))
        out.append(attempt(mod, lambda: blob.seek(100)))
        blob[0] = 65
        blob[1:3] = b"BC"
    out.append(attempt(mod, lambda: blob.read()))
    out.append(attempt(mod, lambda: con.blobopen("t", "b", 99)))
    out.append(attempt(mod, lambda: con.blobopen("t", "nope", 1)))
    ro = con.blobopen("t", "b", 1, readonly=True)
    out.append(attempt(mod, lambda: ro.write(b"a")))
    ro.close()
    out.append(con.execute("select b from t").fetchone())
    con.close()
    return out


def test_blobopen(mod, tmp_path):
    out = same_since((3, 11), "blobopen", _blobs, mod, tmp_path)
    assert out[0] == (10, b"\x00\x00\x00", 3)


def _limits(mod, path):
    con = mod.connect(db(path))
    out = [con.getlimit(mod.SQLITE_LIMIT_VARIABLE_NUMBER) > 0]
    old = con.setlimit(mod.SQLITE_LIMIT_LENGTH, 100)
    out.append((old > 0, con.getlimit(mod.SQLITE_LIMIT_LENGTH)))
    out.append(attempt(mod, lambda: con.execute("select ?", ("x" * 200,)).fetchall()))
    out.append(attempt(mod, lambda: con.execute("select ?", (b"x" * 200,)).fetchall()))
    out.append(attempt(mod, lambda: con.execute("select zeroblob(200)").fetchall()))
    out.append(attempt(mod, lambda: con.getlimit(12345)))
    try:
        con.execute("select ?", ("x" * 200,))
    except mod.DataError as e:
        out.append((e.sqlite_errorcode, e.sqlite_errorname))
    con.close()
    return out


def test_limits_and_data_error(mod, tmp_path):
    out = same_since((3, 11), "setlimit", _limits, mod, tmp_path)
    assert out[2][1] == "DataError"
    assert out[-1] == (18, "SQLITE_TOOBIG")


def _serialize(mod, path):
    con = mod.connect(db(path))
    con.execute("create table t(x)")
    con.executemany("insert into t values (?)", [(i,) for i in range(50)])
    con.commit()
    data = con.serialize()
    out = [type(data).__name__, len(data) % 512 == 0]
    mem = mod.connect(":memory:")
    mem.deserialize(data)
    out.append(mem.execute("select count(*), sum(x) from t").fetchone())
    out.append(attempt(mod, lambda: mem.deserialize(b"garbage" * 100)))
    out.append(attempt(mod, lambda: mem.execute("select * from t").fetchall()))
    out.append(attempt(mod, lambda: con.serialize(name="nope")))
    mem.close()
    con.close()
    return out


def test_serialize_deserialize(mod, tmp_path):
    out = same_since((3, 11), "serialize", _serialize, mod, tmp_path)
    assert out[2] == (50, sum(range(50)))


class WindowSum:
    def __init__(self):
        self.v = 0

    def step(self, x):
        self.v += x

    def inverse(self, x):
        self.v -= x

    def value(self):
        return self.v

    def finalize(self):
        return self.v


def _window(mod, path):
    con = mod.connect(db(path))
    con.execute("create table n(x)")
    con.executemany("insert into n values (?)", [(i,) for i in range(5)])
    con.create_window_function("wsum", 1, WindowSum)
    out = [con.execute("select x, wsum(x) over (order by x rows between 1 preceding and "
                       "current row) from n").fetchall()]
    out.append(con.execute("select wsum(x) from n").fetchall())
    con.create_window_function("wsum", 1, None)
    out.append(attempt(mod, lambda: con.execute("select wsum(x) over () from n").fetchall()))
    con.close()
    return out


def test_create_window_function(mod, tmp_path):
    out = same_since((3, 11), "create_window_function", _window, mod, tmp_path)
    assert out[0] == [(0, 0), (1, 1), (2, 3), (3, 5), (4, 7)]


# --------------------------------------------------------------------------------------
# the same behaviours on an encrypted heliosdb database (key=...)
# --------------------------------------------------------------------------------------

def heliosdb_with(**extra) -> types.ModuleType:
    """heliosdb whose connect() adds ``extra`` (key=, config=) for every file database."""
    real = load("heliosdb")
    proxy = types.ModuleType("heliosdb")
    proxy.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})

    def connect(database, *args, **kwargs):
        name = os.fsdecode(database) if isinstance(database, (str, bytes, os.PathLike)) else ""
        if name and name != ":memory:" and not kwargs.get("uri") and not name.startswith("file:"):
            for k, v in extra.items():
                kwargs.setdefault(k, v)
        return real.connect(database, *args, **kwargs)

    proxy.connect = connect
    return proxy


ENCRYPTED_OBSERVATIONS = {
    "implicit_transactions": lambda m, p: _implicit_transactions(m, p, ""),
    "implicit_transactions_exclusive": lambda m, p: _implicit_transactions(m, p, "EXCLUSIVE"),
    "autocommit": _autocommit,
    "commit_rollback": _commit_rollback,
    "total_changes": _total_changes,
    "two_connections": _two_connections,
    "close_rolls_back": _close_rolls_back,
    "context_manager": _context_manager,
    "rowcount_lastrowid": _rowcount_lastrowid,
    "description": _description,
    "fetching": _fetching,
    "executemany": _executemany,
    "executescript": _executescript,
    "values": _values,
    "large_values": _large_values,
    "errors_in_transaction": _errors_in_transaction,
}


@pytest.mark.parametrize("name", sorted(ENCRYPTED_OBSERVATIONS))
def test_encrypted_database_behaves_like_sqlite3(tmp_path, name):
    mod = heliosdb_with(key=bytes(range(32)))
    same(ENCRYPTED_OBSERVATIONS[name], mod, tmp_path)
    # and the database really was encrypted (no SQLite header in clear)
    files = [f for f in (tmp_path / "heliosdb").iterdir() if f.suffix == ".db"]
    assert files
    for f in files:
        assert not f.read_bytes().startswith(b"SQLite format 3\x00"), f


@pytest.mark.parametrize("preset", ["default", "verbose"])
@pytest.mark.parametrize("name", sorted(ENCRYPTED_OBSERVATIONS))
def test_audited_database_behaves_like_sqlite3(tmp_path, name, preset):
    """Auditing must be invisible to DB-API code: rowcount, lastrowid, total_changes,
    in_transaction, trace output... stay those of sqlite3."""
    same(ENCRYPTED_OBSERVATIONS[name], heliosdb_with(config=preset), tmp_path)
