"""Shared fixtures. Each suite keeps its own specialised fixtures in its own file; code
the suites share lives in the ``helpers`` package (tests/helpers/)."""
from __future__ import annotations

import os

import pytest

from helpers import TESTS_DIR, chain_impl as _impl, summary as _summary


def pytest_configure(config):
    """Child interpreters started by tests import ``helpers`` as the tests do: put tests/
    on their PYTHONPATH (the pytest config's ``pythonpath`` reaches this process only)."""
    path = os.environ.get("PYTHONPATH", "")
    if TESTS_DIR not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, path) if p)


def pytest_terminal_summary(terminalreporter):
    """What tests asked to show (helpers.summary), e.g. CPython's sqlite3 suite's counts."""
    for line in terminalreporter.config.stash.get(_summary.LINES, []):
        terminalreporter.write_line(line)


@pytest.fixture
def db_path(tmp_path):
    """A fresh database path (the file does not exist yet)."""
    return str(tmp_path / "test.db")


@pytest.fixture
def raw_key():
    """A fixed 32-byte raw key (tests only)."""
    return bytes(range(32))


@pytest.fixture(params=_impl.modes(["c", "pure"]))
def chain_impl(request, monkeypatch):
    """Run the test with each chain implementation, "c" and "pure" (only "pure" when the
    run asked for HELIOSDB_IMPL=pure), patched in for this test only. "c" skips, visibly,
    when the native module is not built, and fails instead under HELIOSDB_IMPL=c."""
    _impl.select(monkeypatch, request.param)
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _remove_leftover_wal_index_objects():
    """Crash tests kill processes that hold an encrypted WAL database open: their WAL index
    (a POSIX shared-memory object, docs/FORMAT.md) stays in RAM until the database is next
    closed cleanly. Remove the objects this session left behind, not others: not those
    that were there before it, nor those a live process still maps (another test run on
    the same machine, whose databases are open: removing theirs broke them)."""
    import glob

    pattern = "/dev/shm/heliosdb-*"
    before = set(glob.glob(pattern))
    yield
    left = set(glob.glob(pattern)) - before
    if left:
        left -= _mapped_by_a_live_process(left)
    for path in left:
        try:
            os.unlink(path)
        except OSError:
            pass


def _mapped_by_a_live_process(paths: set) -> set:
    """Those of ``paths`` that some process has mapped (read from /proc/*/maps)."""
    import glob

    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if "/dev/shm/heliosdb-" in line:
                        name = line.rsplit(None, 1)[-1]
                        if name in paths:
                            mapped.add(name)
        except OSError:
            continue  # the process ended meanwhile, or its maps are not ours to read
    return mapped
