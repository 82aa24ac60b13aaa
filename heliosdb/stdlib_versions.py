"""Where the stdlib ``sqlite3`` of one supported Python differs from another's.

heliosdb stands in for the ``sqlite3`` module of the interpreter it runs on. Python 3.11
changed what sqlite3 raises for many kinds of misuse (issue 17 lists them); code written
for 3.10 catches 3.10's classes, so on 3.10 heliosdb raises those. Each name here answers
for the running interpreter, so that the DB-API code asks one question ("what does
sqlite3 raise here?") instead of testing the version itself. 3.12 and 3.13 additions
(``autocommit``, ``getconfig``, deprecations) stay with the code they belong to.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

from .errors import InterfaceError, ProgrammingError, Warning

#: Python 3.10's sqlite3 rules (before CPython 3.11 reworked the module's errors).
PY310 = sys.version_info < (3, 11)

#: 3.10's sqlite3 resets every cursor of a connection on rollback(): fetching from one
#: then raises InterfaceError until it executes again (3.11 lets it go on reading).
ROLLBACK_RESETS_CURSORS = PY310
FETCH_ACROSS_ROLLBACK = ("Cursor needed to be reset because of commit/rollback and can "
                         "no longer be fetched from.")

#: 3.10's sqlite3 reports every error of a user function as "user-defined function raised
#: exception" (a MemoryError or OverflowError too), and a missing aggregate method as the
#: AttributeError itself (3.11: MemoryError, DataError, "... method not defined").
PLAIN_CALLBACK_ERRORS = PY310


#: 3.10's ``with connection:`` enters even a closed connection (its first use raises);
#: 3.11+ refuses to enter one.
ENTER_CHECKS_CONNECTION = not PY310


def isolation_level_shown(given: str, level: str) -> str:
    """What ``isolation_level`` reads back after being set to ``given`` (a valid level,
    ``level`` upper-cased): 3.10 keeps the string as given, 3.11+ the upper-case one."""
    return given if PY310 else level


#: With enable_callback_tracebacks(True), 3.10's sqlite3 prints a callback's error as
#: PyErr_Print does (sys.excepthook, sys.last_value set); 3.11+ passes it, with the
#: callable, to sys.unraisablehook.
CALLBACK_TRACEBACKS_PRINTED = PY310


def missing_finalize() -> str:
    """sqlite3's message for an aggregate class without ``finalize`` (3.10 reports it as
    any error of the method)."""
    return "user-defined aggregate's 'finalize' method " + (
        "raised error" if PY310 else "not defined")


def binding_error(num: int, value: Any, names: Optional[tuple] = None) -> Exception:
    """The error for parameter ``num`` (1-based) whose value cannot be bound.

    3.10: InterfaceError naming the parameter by 0-based index, or by name when it has
    one (``names`` are APSW's ``bindings_names``, which drop the prefix: shown as
    ``:name``, the common spelling); 3.11+: ProgrammingError naming the 1-based index and
    the type.
    """
    if PY310:
        name = names[num - 1] if names and num <= len(names) else None
        where = f":{name}" if name else num - 1
        return InterfaceError(f"Error binding parameter {where} - probably unsupported type.")
    return ProgrammingError(
        f"Error binding parameter {num}: type '{type(value).__name__}' is not supported")


def unsupported_parameters() -> Exception:
    """The error for parameters that are neither a sequence nor a dict."""
    msg = "parameters are of unsupported type"
    return ValueError(msg) if PY310 else ProgrammingError(msg)


def multiple_statements() -> Exception:
    """The error for SQL text holding more than one statement (execute, executemany)."""
    msg = "You can only execute one statement at a time."
    return Warning(msg) if PY310 else ProgrammingError(msg)


def null_character() -> Exception:
    """The error for SQL text holding a NUL character (execute, executemany, calling a
    connection)."""
    msg = "the query contains a null character"
    return ValueError(msg) if PY310 else ProgrammingError(msg)


def script_not_str(script: Any) -> Exception:
    """The error for an ``executescript`` argument that is not a str."""
    if PY310:
        return ValueError("script argument must be unicode.")
    return TypeError(f"executescript() argument must be str, not {type(script).__name__}")


def script_text(script: str) -> str:
    """The part of a script sqlite3 runs. 3.10 hands SQLite the UTF-8 text, which ends at
    a NUL: what follows one is ignored. 3.11+ refuses a NUL (ValueError)."""
    if "\x00" in script:
        if PY310:
            return script[:script.index("\x00")]
        raise ValueError("the query contains a null character")
    return script


def noncontiguous_buffer() -> Exception:
    """The error for a non-contiguous buffer bound as a BLOB parameter."""
    if PY310:
        return ValueError("could not convert BLOB to buffer")
    return BufferError("memoryview: underlying buffer is not C-contiguous")


def collation_name(name: str) -> str:
    """The name a collation is registered under. 3.10 upper-cases it and accepts only
    ASCII letters, digits and ``_`` (ProgrammingError otherwise); 3.11+ takes any name."""
    if not PY310 or not isinstance(name, str):
        return name
    upper = str.upper(name)  # not a subclass's upper(), as sqlite3
    if not all(c == "_" or "0" <= c <= "9" or "A" <= c <= "Z" for c in upper):
        raise ProgrammingError("invalid character in collation name")
    return upper


def isolation_level_type_error(value: Any) -> Exception:
    """The error for an ``isolation_level`` that is neither a str nor None."""
    if PY310:
        return TypeError(
            f"isolation_level must be a string or None, not {type(value).__name__}")
    return TypeError("isolation_level must be str or None")


def isolation_level_value_error() -> Exception:
    """The error for an ``isolation_level`` string that is not a valid one."""
    if PY310:
        return ValueError("invalid value for isolation_level")
    return ValueError(
        "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'")


def timeout_type_error(value: Any) -> Exception:
    """The error for a ``timeout`` that is not a real number."""
    prefix = "must be" if PY310 else "timeout must be a"
    return TypeError(f"{prefix} real number, not {type(value).__name__}")
