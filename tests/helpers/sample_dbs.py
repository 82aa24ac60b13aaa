"""Small databases for the command-line suites to open, made in-process (the tests drive
the CLI, not the making): each helper runs the given statements and closes the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import heliosdb


def make_audited_db(path: Path, *statements: str) -> Path:
    """A database with an audit log (the default preset, session user alice) that records
    ``statements``, each committed on its own."""
    conn = heliosdb.connect(str(path), config="default", audit_user="alice",
                            isolation_level=None)
    for sql in statements:
        conn.execute(sql)
    conn.close()
    return path


def make_encrypted_db(path: Path, key: Any, *statements: str) -> Path:
    """An encrypted database under ``key`` (raw bytes or a passphrase) holding what
    ``statements`` wrote; skips the test where the encryption extension is not built."""
    if not heliosdb.native_available():
        pytest.skip("the encryption extension is not built here")
    conn = heliosdb.connect(str(path), key=key)
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()
    return path
