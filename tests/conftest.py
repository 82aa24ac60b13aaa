"""Shared fixtures. Each suite keeps its own specialised fixtures in its own file."""
from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture
def db_path(tmp_path):
    """A fresh database path (the file does not exist yet)."""
    return str(tmp_path / "test.db")


@pytest.fixture
def raw_key():
    """A fixed 32-byte raw key (tests only)."""
    return bytes(range(32))


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 60):
    """Run a Python snippet in a fresh interpreter of this venv; return CompletedProcess."""
    import subprocess

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def _remove_leftover_wal_index_objects():
    """Crash tests kill processes that hold an encrypted WAL database open: their WAL index
    (a POSIX shared-memory object, docs/FORMAT.md) stays in RAM until the database is next
    closed cleanly. Remove the objects this session left behind, not others."""
    import glob

    pattern = "/dev/shm/heliosdb-*"
    before = set(glob.glob(pattern))
    yield
    for path in set(glob.glob(pattern)) - before:
        try:
            os.unlink(path)
        except OSError:
            pass
