"""CPython's regression tests that crashed heliosdb where sqlite3 raises (issue 17).

Each case runs in a fresh interpreter, so a crash fails the test instead of killing the
suite, and prints what the module did; heliosdb must print what stdlib sqlite3 prints.
"""
from __future__ import annotations

import pytest

from helpers.processes import run_python

# bpo-41662: a parameter whose __conform__ mutates the parameters while they are bound.
MUTATING_CONFORM = r'''
import sys
mod = __import__(sys.argv[1])
con = mod.connect(":memory:")
con.execute("create table foo(bar, baz)")
class X:
    def __conform__(self, protocol):
        parameters.clear()
        return "..."
for kind in ("list", "dict", "many-list", "many-dict"):
    if kind == "list":
        parameters = [X(), 0]
        f = lambda: con.execute("insert into foo(bar, baz) values (?, ?)", parameters)
    elif kind == "dict":
        parameters = {"a": X(), "b": 0}
        f = lambda: con.execute("insert into foo values (:a, :b)", parameters)
    elif kind == "many-list":
        parameters = [X(), 0]
        f = lambda: con.executemany("insert into foo values (?, ?)", [parameters])
    else:
        parameters = {"a": X(), "b": 0}
        f = lambda: con.executemany("insert into foo values (:a, :b)", [parameters])
    try:
        f()
        print(kind, "ok")
    except Exception as e:
        print(kind, type(e).__name__, e)
print(con.execute("select count(*) from foo").fetchone())
'''


# Found by tests/test_dbapi_fuzz.py: the progress handler interrupts the implicit BEGIN.
INTERRUPTED_BEGIN = r'''
import sys
mod = __import__(sys.argv[1])
con = mod.connect(":memory:")
con.execute("create table t(a)")
con.set_progress_handler(lambda: True, 1)
for sql in ("delete from t where a = ?", "insert into t values (?)"):
    for many in (False, True):
        try:
            if many:
                con.executemany(sql, [(1,), (2,)])
            else:
                con.execute(sql, (1,))
            print(sql, many, "ok", con.in_transaction)
        except Exception as e:
            print(sql, many, type(e).__name__, e, con.in_transaction)
con.set_progress_handler(None, 1)
print(con.execute("select count(*) from t").fetchone())
'''


@pytest.mark.parametrize("case", [MUTATING_CONFORM, INTERRUPTED_BEGIN],
                         ids=["bpo-41662", "interrupted-implicit-begin"])
def test_no_crash_where_sqlite3_raises(case):
    want = run_python(case, "sqlite3")
    got = run_python(case, "heliosdb")
    assert want.returncode == 0, want.stderr
    assert got.returncode == 0, f"heliosdb exited {got.returncode}: {got.stderr[-2000:]}"
    assert got.stdout == want.stdout
