"""Helpers shared by the tests/test_encryption*.py files."""
from __future__ import annotations

import os
from typing import Any, List, Tuple

import apsw

from heliosdb import crypto
from heliosdb.errors import translate

FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def open_enc(path: Any, key: Any = KEY, **kw: Any) -> apsw.Connection:
    """Open through the same entry point heliosdb.connect() uses."""
    return crypto.open_connection(str(path), flags=kw.pop("flags", FLAGS), uri=kw.pop("uri", False),
                                  key=key, encryption=kw.pop("encryption", None), **kw)


def q(conn: apsw.Connection, sql: str, params: Any = None) -> List[Tuple]:
    """Run SQL, mapping apsw errors as the DB-API layer does (explain, then translate)."""
    try:
        return conn.execute(sql, params).fetchall() if params is not None else conn.execute(sql).fetchall()
    except apsw.Error as exc:
        raise (crypto.explain(conn, exc) or translate(exc)) from None


def assert_reopens(path: Any, rows: int, key: Any = KEY) -> None:
    """Opened again under ``key``, the database at ``path`` has ``rows`` rows in table t
    and passes SQLite's integrity check."""
    c = open_enc(path, key)
    assert q(c, "select count(*) from t") == [(rows,)]
    assert q(c, "pragma integrity_check") == [("ok",)]
    c.close()


def open_fd_files() -> List[str]:
    """Paths (under /proc/self/fd) of this process's open regular files, deleted ones
    included: SQLite unlinks temp files right after opening them."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        p = f"/proc/self/fd/{fd}"
        try:
            target = os.readlink(p)
        except OSError:
            continue
        if target.startswith("/") and not target.startswith(("/dev", "/proc")) and os.path.isfile(p):
            out.append(p)
    return out

