"""Lines a test asks to show at the end of the run, after pytest's own summary (what a
passing test measured, e.g. the counts of CPython's sqlite3 suite): tests/conftest.py
prints them."""
from __future__ import annotations

import pytest

LINES = pytest.StashKey[list]()


def add(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(LINES, []).append(line)
