"""Differential tests, part 3 (issue 17): behaviours CPython's own test_sqlite3 checks, kept
here too so that they run where the CPython test package is not installed
(tests/cpython runs the whole suite). Each observation must give sqlite3's outcome."""
from __future__ import annotations

import collections.abc
import sys

from helpers.dbapi import (  # noqa: F401 - `mod` is a fixture
    SQLITE3_311, attempt, mod, same, same_since)


def _statements(mod, path):
    con = mod.connect(":memory:")
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    con.commit()
    out = [attempt(mod, lambda: con.execute(sql).fetchall()) for sql in (
        "select 1; -- foo bar", "select 1; --", "select 5+4;\n\n/*\nfoo\n*/\n",
        "select 1;;", "; select 2")]
    out.append(attempt(mod, lambda: con.execute("; begin") and con.in_transaction))
    con.rollback()
    cur = con.execute("update t set x = 2 returning x")
    out.append(cur.rowcount)
    out.append(cur.fetchone())
    out.append(cur.rowcount)
    out.append(attempt(mod, lambda: con.execute("select 1\0")))
    return out


def test_statement_text(mod, tmp_path):
    same(_statements, mod, tmp_path)


def _connection_objects(mod, path):
    con = mod.connect(":memory:")
    out = [type(con("select 1")).__name__ == "Statement"]
    out.append(attempt(mod, lambda: type(con("select 1"))(), message=False))
    if SQLITE3_311:  # sqlite3.Blob is 3.11's
        out.append(attempt(mod, lambda: mod.Blob(), message=False))
    con.row_factory = mod.Row
    row = con.execute("select 1 as a, 2 as \xff").fetchone()
    out.append(isinstance(row, collections.abc.Sequence))
    out.append((row["A"], row["\xff"], attempt(mod, lambda: row["\u0178"])))

    class Factory(mod.Connection):
        def __init__(self, *args, **kwargs):
            kwargs["isolation_level"] = None
            super().__init__(*args, **kwargs)

    out.append(mod.connect(":memory:", factory=Factory).isolation_level)
    uninit = mod.Connection.__new__(mod.Connection)
    out.append(attempt(mod, lambda: uninit.cursor()))
    out.append(attempt(mod, lambda: uninit.close()))
    con.close()
    out.append(attempt(mod, lambda: con()))
    return out


def test_connection_objects(mod, tmp_path):
    same(_connection_objects, mod, tmp_path)


def _callback_errors(mod, path):
    con = mod.connect(":memory:")
    seen = []
    old, old_excepthook = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = lambda args: seen.append(
        (args.exc_type.__name__, getattr(args.object, "__name__", None)))
    # 3.10's sqlite3 prints a callback's traceback through sys.excepthook instead
    sys.excepthook = lambda exc_type, exc, tb: seen.append(("excepthook", exc_type.__name__))

    def boom():
        1 / 0

    def too_big():
        return 2 ** 70

    def no_memory():
        raise MemoryError

    con.create_function("boom", 0, boom)
    con.create_function("too_big", 0, too_big)
    con.create_function("no_memory", 0, no_memory)
    out = []
    try:
        for flag in (True, False):
            mod.enable_callback_tracebacks(flag)
            for f in ("boom", "too_big", "no_memory"):
                out.append(attempt(mod, lambda: con.execute(f"select {f}()").fetchall()))
            out.append(list(seen))
            seen.clear()
    finally:
        mod.enable_callback_tracebacks(False)
        sys.unraisablehook, sys.excepthook = old, old_excepthook
    return out


def test_callback_errors(mod, tmp_path):
    same(_callback_errors, mod, tmp_path)


def _blob_protocol(mod, path):
    con = mod.connect(":memory:")
    con.execute("create table t(b blob)")
    con.execute("insert into t values (zeroblob(10))")
    blob = con.blobopen("t", "b", 1)
    out = [attempt(mod, lambda: b"a" in blob, message=False)]
    out.append(attempt(mod, blob.__delitem__, 0))
    out.append(attempt(mod, lambda: blob[1.5]))
    out.append(attempt(mod, lambda: blob.__setitem__(0, b"1"), message=False))
    out.append(attempt(mod, lambda: blob.__setitem__(0, 2 ** 65)))
    out.append(attempt(mod, lambda: blob.__setitem__(slice(0, 2), memoryview(b"abcd")[::2]),
                       message=False))
    blob[0:4] = b"abcd"
    out.append((blob[1:3], blob[::3], blob[-1]))
    blob.close()
    out.append(attempt(mod, lambda: blob.__exit__(None, None, None)))
    return out


def test_blob_protocol(mod, tmp_path):
    same_since((3, 11), "blobopen", _blob_protocol, mod, tmp_path)


def test_shared_memory_uri_reads_uris_as_sqlite_does():
    # heliosdb maps shared-cache memory URIs onto the memdb VFS; it must read the URI by
    # SQLite's rules (heliosdb.crypto.uri), not by a web form's (parse_qsl).
    from heliosdb.dbapi import _shared_memory_uri as mapped

    assert mapped("file:m1?mode=memory&cache=shared") == "file:/m1?vfs=memdb"
    # the last mode / cache wins, as in SQLite
    assert mapped("file:m1?mode=memory&cache=shared&mode=rwc") == \
        "file:m1?mode=memory&cache=shared&mode=rwc"
    assert mapped("file:m1?mode=rwc&cache=shared&mode=memory") == "file:/m1?vfs=memdb"
    assert mapped("file:m1?cache=shared&mode=memory&cache=private").endswith("cache=private")
    # '+' is not a space in SQLite; '#' ends the URI; %HH is decoded in the path
    assert mapped("file:m%20x?mode=memory&cache=shared&k=1+2#f=1") == \
        "file:/m%20x?k=1%2B2&vfs=memdb"
    # a URI SQLite itself refuses is left for SQLite to refuse
    assert mapped("file://host/m?mode=memory&cache=shared") == \
        "file://host/m?mode=memory&cache=shared"


def test_shared_memory_uri_shares_one_database():
    import heliosdb

    uri = "file:shared%20one?cache=shared&mode=memory#fragment"
    a = heliosdb.connect(uri, uri=True)
    b = heliosdb.connect(uri, uri=True)
    a.execute("create table t(x)")
    a.execute("insert into t values (1)")
    a.commit()
    assert b.execute("select x from t").fetchall() == [(1,)]
    a.close()
    b.close()


def test_enable_shared_cache_warns_as_sqlite3_does(mod):
    """Deprecated in 3.10 (a DeprecationWarning naming the caller), removed in 3.12.
    heliosdb keeps the function on 3.12+ (it refuses True: APSW has no shared cache)."""
    import warnings

    if not hasattr(mod, "enable_shared_cache"):
        assert mod.__name__ == "sqlite3" and sys.version_info >= (3, 12)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod.enable_shared_cache(False)
    if sys.version_info < (3, 12):
        assert [w.category for w in caught] == [DeprecationWarning]
        assert caught[0].filename == __file__
        assert str(caught[0].message).startswith("enable_shared_cache is deprecated")
    else:
        assert caught == []
