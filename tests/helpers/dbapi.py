"""Helpers of the differential DB-API suites: run an observation on stdlib ``sqlite3`` and
on ``heliosdb`` and require the same results and exception classes."""
from __future__ import annotations

import sqlite3
import sys
import types

import pytest

PEP249 = ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
          "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
          "NotSupportedError")


#: Python 3.11 gave sqlite3's exceptions sqlite_errorcode / sqlite_errorname and added
#: blobopen, serialize, setlimit and window functions. heliosdb has them on 3.10 as well;
#: observations compare them with the stdlib where the stdlib has them.
SQLITE3_311 = sys.version_info >= (3, 11)


def error_codes(exc: BaseException) -> tuple:
    """``(sqlite_errorcode, sqlite_errorname)`` where the stdlib's exceptions carry them
    (3.11+), else ``()``."""
    if not SQLITE3_311:
        return ()
    return (getattr(exc, "sqlite_errorcode", "unset"), getattr(exc, "sqlite_errorname", "unset"))


def load(name: str) -> types.ModuleType:
    if name == "sqlite3":
        return sqlite3
    import heliosdb
    if not hasattr(heliosdb, "connect"):
        pytest.fail("heliosdb.connect does not exist yet (heliosdb/dbapi.py not wired in)")
    return heliosdb


@pytest.fixture(params=["sqlite3", "heliosdb"])
def mod(request) -> types.ModuleType:
    return load(request.param)


def signature(mod, exc: BaseException, message: bool = True):
    """A module-independent description of an exception."""
    return ("raise", type(exc).__name__,
            tuple(n for n in PEP249 if isinstance(exc, getattr(mod, n))),
            str(exc) if message else None)


def plain(mod, value):
    """Module objects (a returned cursor, say) as module-independent tags."""
    for cls in ("Cursor", "Connection", "Row"):
        if isinstance(value, getattr(mod, cls)):
            return f"<{cls}>" if cls != "Row" else ("<Row>", tuple(value))
    return value


def attempt(mod, fn, message: bool = True):
    """("ok", fn()) or the signature of what fn raised (AssertionError propagates)."""
    try:
        return ("ok", plain(mod, fn()))
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - that's the point
        return signature(mod, exc, message)


def outcome(fn, mod, path):
    try:
        return ("ok", fn(mod, path))
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001
        return signature(mod, exc)


def explain(mod, mine, ref) -> str:
    """The differing items first (by index or key), then both outcomes in full."""
    lines = []
    a, b = mine[1], ref[1]
    if mine[0] == ref[0] == "ok" and type(a) is type(b) and isinstance(a, (list, tuple, dict)):
        keys = a.keys() | b.keys() if isinstance(a, dict) else range(max(len(a), len(b)))
        for k in keys:
            x = a.get(k, "<absent>") if isinstance(a, dict) else (a[k] if k < len(a) else "<absent>")
            y = b.get(k, "<absent>") if isinstance(b, dict) else (b[k] if k < len(b) else "<absent>")
            if x != y:
                lines.append(f"  [{k!r}] {mod.__name__}: {x!r}\n  [{k!r}] sqlite3:  {y!r}")
    lines.append(f"  full {mod.__name__}: {mine!r}\n  full sqlite3:  {ref!r}")
    return "\n".join(lines)


def same(fn, mod, tmp_path):
    """Run ``fn(mod, dir)``; for heliosdb, also on sqlite3, and require equal outcomes."""
    mine_dir = tmp_path / mod.__name__
    mine_dir.mkdir()
    mine = outcome(fn, mod, mine_dir)
    if mod is sqlite3:
        ref = mine
    else:
        ref_dir = tmp_path / "reference-sqlite3"
        ref_dir.mkdir()
        ref = outcome(fn, sqlite3, ref_dir)
    # an observation catches the errors it expects: sqlite3 raising means the test is wrong
    assert ref[0] == "ok", f"the observation itself fails on sqlite3: {ref!r}"
    assert mine == ref, f"{mod.__name__} differs from sqlite3:\n" + explain(mod, mine, ref)
    return mine[1]


def same_since(version: tuple, api: str, fn, mod, tmp_path):
    """:func:`same` for an observation of a ``sqlite3.Connection`` method the stdlib gained
    in ``version``. On an older Python the stdlib must lack it (checked), and heliosdb's
    outcome (it offers the method anyway) is returned for the test's own assertions."""
    if sys.version_info >= version:
        return same(fn, mod, tmp_path)
    assert not hasattr(sqlite3.Connection, api), f"sqlite3 has {api} before {version}"
    helios_dir = tmp_path / "heliosdb-only"
    helios_dir.mkdir()
    mine = outcome(fn, load("heliosdb"), helios_dir)
    assert mine[0] == "ok", f"the observation fails on heliosdb: {mine!r}"
    return mine[1]


def db(path) -> str:
    return str(path / "test.db")
