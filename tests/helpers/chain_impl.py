"""Selecting the audit chain's implementation for one test, without a run-time switch.

The library chooses ``heliosdb.audit.chain.__impl__`` once, at import, from
``HELIOSDB_IMPL`` (heliosdb/native.py). A test that needs the other implementation in the
same process patches that choice with pytest's monkeypatch for its own duration only
(:func:`select`, the ``chain_impl`` fixture of tests/conftest.py); a child process gets
``HELIOSDB_IMPL`` in its environment instead.

Modes: ``"c"`` (the C chain; the verifier uses its SQL aggregate), ``"c-batch"`` (C, the
verifier feeding rows to C from Python: its path when the aggregate cannot be
registered) and ``"pure"``.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Sequence

import pytest

from heliosdb import native
from heliosdb.audit import chain

#: What this run asked for with HELIOSDB_IMPL (``HELIOSDB_PURE=1`` counts as "pure"),
#: or None: then both implementations are tested.
REQUESTED = "pure" if os.environ.get("HELIOSDB_PURE", "") not in ("", "0") else (
    os.environ.get(native.IMPL_VARIABLE, "").strip().lower() or None)


def modes(candidates: Sequence[str]) -> list[str]:
    """The modes among ``candidates`` this run tests: all of them, or only the pure one
    when the run asked for ``HELIOSDB_IMPL=pure`` (the C ones ran in the main run)."""
    if REQUESTED == "pure":
        return [m for m in candidates if m == "pure"]
    return list(candidates)


def select(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Run the chain in ``mode`` until ``monkeypatch`` undoes it.

    A C mode when the native module is not loaded skips the test, visibly, unless the run
    asked for ``HELIOSDB_IMPL=c``: then it fails (a broken build must not pass as skips).
    """
    name = "c" if mode.startswith("c") else "pure"
    if name not in chain.available_impls():
        why = f"native chain not available: {native.unavailable_reason()}"
        if REQUESTED == "c":
            pytest.fail(f"HELIOSDB_IMPL=c but {why}")
        pytest.skip(why)
    verify_mod = importlib.import_module("heliosdb.audit.verify")  # not the package's verify()
    monkeypatch.setattr(chain, "__impl__", name)
    monkeypatch.setattr(verify_mod, "_USE_SQL_AGGREGATE", mode == "c")


def activate(mode: str) -> Callable[[], None]:
    """:func:`select` outside a fixture (inside a loop over modes): returns the function
    that undoes it."""
    patch = pytest.MonkeyPatch()
    try:
        select(patch, mode)
    except BaseException:
        patch.undo()
        raise
    return patch.undo
