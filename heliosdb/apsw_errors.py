"""APSW's exceptions raised as the stdlib ``sqlite3`` raises them.

One place decides what an error from APSW (or from a user callback run by SQLite) becomes:
the encryption layer is asked first what an I/O or corruption error means (a tampered page
becomes :class:`~heliosdb.errors.CorruptPageError` naming the file and page), then
sqlite3's exception class and message are chosen. The DB-API cursor and the audit capture
both raise through here, so a statement fails the same way audited or not.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import apsw

from .errors import OperationalError, ProgrammingError, translate

__all__ = ["CallbackFailed", "explain_error", "translate_error", "raise_translated"]


class CallbackFailed(Exception):
    """Raised out of a user callback so that execute() reports it as sqlite3 does: an
    ``OperationalError`` with sqlite3's message, ``MemoryError`` for a MemoryError and
    ``DataError`` ('string or blob too big') for an OverflowError."""

    def __init__(self, message: str, error: Any = None) -> None:
        super().__init__(message)
        self.error = error or OperationalError


_BINDING_NO_NAME = re.compile(r"Binding (\d+) has no name")
_BINDINGS_COUNT = re.compile(r"statement uses (\d+) and there are (\d+) supplied")


def explain_error(db: Any, exc: BaseException) -> Optional[BaseException]:
    """The encryption layer's reading of an APSW error (a tampered page -> CorruptPageError
    naming file and page), or None."""
    from .crypto import explain

    try:
        return explain(db, exc)
    except Exception:  # noqa: BLE001 - explaining must never hide the original error
        return None


def translate_error(db: Any, exc: BaseException) -> BaseException:
    """``translate``, after asking the encryption layer what the error means."""
    if isinstance(exc, apsw.Error):
        new = explain_error(db, exc)
        if new is not None:
            return new
    return translate(exc)


def raise_translated(exc: BaseException, sql: Optional[str] = None, db: Any = None) -> None:
    """Re-raise an exception from APSW (or a user callback) as sqlite3 would raise it."""
    # The shim's per-thread record of a failed page needs no connection; only the
    # truncated-file diagnosis does (``db`` may be None on some paths).
    if isinstance(exc, (apsw.IOError, apsw.CorruptError, apsw.NotADBError,
                        apsw.CantOpenError)):
        new = explain_error(db, exc)
        if new is not None:
            raise new from exc
    if isinstance(exc, CallbackFailed):
        if exc.error is MemoryError:
            raise MemoryError from exc.__cause__
        raise exc.error(str(exc)) from exc.__cause__
    if isinstance(exc, KeyError) and sql is not None and exc.args \
            and isinstance(exc.args[0], str):
        # APSW looks named parameters up in the mapping; a missing one is a KeyError.
        name = exc.args[0]
        for prefix in ":@$":
            if prefix + name in sql:
                name = prefix + name
                break
        raise ProgrammingError(
            f"You did not supply a value for binding parameter {name}.") from exc
    if isinstance(exc, UnicodeDecodeError):
        raise OperationalError(f"Could not decode to UTF-8: {exc}") from exc
    if type(exc) is OverflowError:
        raise OverflowError("Python int too large to convert to SQLite INTEGER") from exc
    if isinstance(exc, apsw.BindingsError):
        m = _BINDING_NO_NAME.search(str(exc))
        if m:
            raise ProgrammingError(
                f"Binding {int(m.group(1)) + 1} has no name, but you supplied a dictionary "
                "(which has only names).") from exc
        m = _BINDINGS_COUNT.search(str(exc))
        if m:
            raise ProgrammingError(
                "Incorrect number of bindings supplied. The current statement uses "
                f"{m.group(1)}, and there are {m.group(2)} supplied.") from exc
    if isinstance(exc, apsw.Error):
        raise translate(exc) from exc
    raise exc
