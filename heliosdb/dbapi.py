"""Connection, Cursor and Row: the stdlib ``sqlite3`` semantics, built on APSW.

APSW is deliberately not DB-API: it runs in SQLite's own autocommit mode and has no
commit, rollback, rowcount or fetchone. This module supplies them with the rules of the
stdlib module of the running Python (3.10-3.12):

* implicit ``BEGIN`` before INSERT/UPDATE/DELETE/REPLACE unless ``isolation_level`` is
  None; DDL and SELECT never begin a transaction; ``commit`` / ``rollback`` only act
  inside one; closing a connection rolls back what was not committed;
* ``rowcount`` is the change count of DML statements (summed over ``executemany``) and
  -1 otherwise; ``lastrowid`` follows ``sqlite3_last_insert_rowid`` after ``execute``;
* adapters, converters (``PARSE_DECLTYPES`` / ``PARSE_COLNAMES``), ``text_factory`` and
  ``row_factory`` apply as in the stdlib;
* misuse raises the stdlib's classes with the stdlib's messages, and no ``apsw``
  exception ever leaves: :func:`heliosdb.errors.translate` maps result codes.

Speed (DESIGN.md section 1): each distinct SQL text is classified once (DML? several
statements?) and cached; ``description`` is built lazily; the per-``execute`` path does
no work that its statement does not need.
"""
from __future__ import annotations

import datetime
import functools
import operator
import os
import sys
import threading
import warnings as _warnings
import weakref
from threading import get_ident as _get_ident
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterable, Iterator, Optional

import apsw

from . import errors
from . import stdlib_versions as _versions
from .errors import InterfaceError, OperationalError, ProgrammingError, translate
from .shared_connection import share_connection, share_cursor

__all__ = [
    "Connection", "Cursor", "Row", "Blob", "PrepareProtocol", "connect",
    "register_adapter", "register_converter", "adapt", "complete_statement",
    "PARSE_DECLTYPES", "PARSE_COLNAMES", "adapters", "converters",
]

PARSE_DECLTYPES = 1
PARSE_COLNAMES = 2

# Warnings (3.12+ deprecations) skip heliosdb's own frames, to name the caller's line.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_VALID_ISOLATION_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")

# Python 3.12's transaction control (PEP 249 autocommit): LEGACY_TRANSACTION_CONTROL keeps
# the isolation_level rules; True is SQLite's autocommit; False keeps a transaction open.
LEGACY_TRANSACTION_CONTROL = -1
_HAS_AUTOCOMMIT = sys.version_info >= (3, 12)
_HAS_DBCONFIG = sys.version_info >= (3, 12)
# The SQLITE_DBCONFIG_* verbs sqlite3 (3.12+) exports for getconfig/setconfig.
DBCONFIG_NAMES = (
    "SQLITE_DBCONFIG_DEFENSIVE", "SQLITE_DBCONFIG_DQS_DDL", "SQLITE_DBCONFIG_DQS_DML",
    "SQLITE_DBCONFIG_ENABLE_FKEY", "SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER",
    "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION", "SQLITE_DBCONFIG_ENABLE_QPSG",
    "SQLITE_DBCONFIG_ENABLE_TRIGGER", "SQLITE_DBCONFIG_ENABLE_VIEW",
    "SQLITE_DBCONFIG_LEGACY_ALTER_TABLE", "SQLITE_DBCONFIG_LEGACY_FILE_FORMAT",
    "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", "SQLITE_DBCONFIG_RESET_DATABASE",
    "SQLITE_DBCONFIG_TRIGGER_EQP", "SQLITE_DBCONFIG_TRUSTED_SCHEMA",
    "SQLITE_DBCONFIG_WRITABLE_SCHEMA",
)
DBCONFIG_CONSTANTS = {n: getattr(apsw, n) for n in DBCONFIG_NAMES if hasattr(apsw, n)}
_DBCONFIG_OPS = frozenset(DBCONFIG_CONSTANTS.values())
# On an audited connection, the settings that would weaken the log (docs/THREAT_MODEL.md
# section 3), with the value that weakens it: setting that value (when it is not already
# in effect) is refused with AuditPolicyError. DEFENSIVE off re-allows writable_schema and
# sqlite_dbpage writes; WRITABLE_SCHEMA lets SQL rewrite the schema; an extension or an
# FTS3 tokenizer pointer runs arbitrary code; TRUSTED_SCHEMA lets schema objects call
# side-effecting functions; RESET_DATABASE empties the database (and its log).
_DBCONFIG_WEAKENS = {
    DBCONFIG_CONSTANTS[n]: weak for n, weak in (
        ("SQLITE_DBCONFIG_DEFENSIVE", False), ("SQLITE_DBCONFIG_WRITABLE_SCHEMA", True),
        ("SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION", True),
        ("SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER", True),
        ("SQLITE_DBCONFIG_TRUSTED_SCHEMA", True), ("SQLITE_DBCONFIG_RESET_DATABASE", True),
    ) if n in DBCONFIG_CONSTANTS
}


def _autocommit_mode(value: Any) -> Any:
    if value is True or value is False:
        return value
    if type(value) is int and value == LEGACY_TRANSACTION_CONTROL:
        return LEGACY_TRANSACTION_CONTROL
    raise ValueError("autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL")
_NATIVE_TYPES = (int, float, str, bytes, type(None))


# --- adapters and converters (module-global registries, as in the stdlib) ------------------


# SQL functions that heliosdb's own statements call on the user's connection: verify()'s
# chain walk (min(id), max(id), typeof, ifnull, the C aggregate heliosdb_chain_check) and
# the log-present check (count). SQLite lets an application function replace a built-in
# of the same name, so a user's max() returning 0 made verify() walk nothing and report
# ok on a tampered log (tests/test_audit_attacks.py). Refused on an audited connection.
_RESERVED_FUNCTIONS = frozenset(("min", "max", "count", "typeof", "ifnull"))


def _reserved_function(name: Any) -> bool:
    low = name.lower() if isinstance(name, str) else ""
    return low in _RESERVED_FUNCTIONS or low.startswith("heliosdb_")


def _probing(conn: Any, run: Callable[[], Any]) -> Any:
    """Run a compile-only probe (``run``); on an audited connection its authorizer actions
    do not reach the statement being classified (see AuditSession.probe)."""
    audit = conn._audit
    return run() if audit is None else audit.probe(run)


class PrepareProtocol:
    """The protocol object adapters are registered against (``sqlite3.PrepareProtocol``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


adapters: dict[tuple[type, type], Callable[[Any], Any]] = {}
converters: dict[str, Callable[[bytes], Any]] = {}
# True once an adapter is registered for a type SQLite binds natively: bindings must then
# be walked in Python, since APSW binds those types without asking.
_base_type_adapted = False
# Every connection opened (for register_adapter: see Connection._plain_dml).
_open_connections: "weakref.WeakSet[Connection]" = weakref.WeakSet()


def register_adapter(type_: type, adapter: Callable[[Any], Any], /) -> None:
    """Register a callable that turns a ``type_`` object into a SQLite value."""
    global _base_type_adapted
    if type_ in (int, float, str, bytearray):
        _base_type_adapted = True
        for conn in list(_open_connections):
            conn._plain_dml.clear()  # its shortest path binds without asking adapters
    adapters[(type_, PrepareProtocol)] = adapter


def register_converter(typename: str, converter: Callable[[bytes], Any], /) -> None:
    """Register a callable converting stored bytes of declared type ``typename``."""
    if not isinstance(typename, str):
        raise TypeError(f"register_converter() argument 1 must be str, not "
                        f"{type(typename).__name__}")
    converters[typename.upper()] = converter


def _stdlib_adapter(value: Any) -> Optional[Callable[[Any], Any]]:
    """An adapter registered with the stdlib ``sqlite3`` module for ``type(value)``.

    Libraries that know only sqlite3 (pandas registers one for ``datetime.time``) register
    there; honouring that registry keeps them working. heliosdb never imports sqlite3
    itself: the registry is consulted only if someone else already did.
    """
    import sys

    std = sys.modules.get("sqlite3")
    if std is None:
        return None
    registry = getattr(std, "adapters", None)
    proto = getattr(std, "PrepareProtocol", None)
    if not isinstance(registry, dict) or proto is None:
        return None
    return registry.get((type(value), proto))


def adapt(obj: Any, proto: type = PrepareProtocol, alt: Any = None, /) -> Any:
    """Adapt ``obj`` with the registered adapter for its type, like ``sqlite3.adapt``."""
    adapter = adapters.get((type(obj), proto))
    if adapter is not None:
        return adapter(obj)
    try:
        conform = getattr(proto, "__adapt__")
    except AttributeError:
        pass
    else:
        res = conform(obj)
        if res is not None:
            return res
    try:
        conform = getattr(obj, "__conform__")
    except AttributeError:
        pass
    else:
        res = conform(proto)
        if res is not None:
            return res
    if alt is not None:
        return alt
    raise ProgrammingError("can't adapt")


def _register_default_adapters() -> None:
    # The stdlib registers these (deprecated from 3.12 on, still present, with a warning).
    import sys
    import warnings

    deprecated = sys.version_info >= (3, 12)
    kw: dict = {"skip_file_prefixes": (_PACKAGE_DIR,)} if deprecated else {}
    msg = ("The default {what} is deprecated as of Python 3.12; see the sqlite3 "
           "documentation for suggested replacement recipes")

    def adapt_date(val: datetime.date) -> str:
        if deprecated:
            warnings.warn(msg.format(what="date adapter"), DeprecationWarning, **kw)
        return val.isoformat()

    def adapt_datetime(val: datetime.datetime) -> str:
        if deprecated:
            warnings.warn(msg.format(what="datetime adapter"), DeprecationWarning, **kw)
        return val.isoformat(" ")

    def convert_date(val: bytes) -> datetime.date:
        if deprecated:
            warnings.warn(msg.format(what="date converter"), DeprecationWarning, **kw)
        return datetime.date(*map(int, val.split(b"-")))

    def convert_timestamp(val: bytes) -> datetime.datetime:
        if deprecated:
            warnings.warn(msg.format(what="timestamp converter"), DeprecationWarning, **kw)
        datepart, timepart = val.split(b" ")
        year, month, day = map(int, datepart.split(b"-"))
        timepart_full = timepart.split(b".")
        hours, minutes, seconds = map(int, timepart_full[0].split(b":"))
        if len(timepart_full) == 2:
            microseconds = int("{:0<6.6}".format(timepart_full[1].decode()))
        else:
            microseconds = 0
        return datetime.datetime(year, month, day, hours, minutes, seconds, microseconds)

    register_adapter(datetime.date, adapt_date)
    register_adapter(datetime.datetime, adapt_datetime)
    register_converter("date", convert_date)
    register_converter("timestamp", convert_timestamp)


_register_default_adapters()


def complete_statement(statement: str) -> bool:
    """True if ``statement`` holds one or more complete SQL statements (``;``-terminated)."""
    if not isinstance(statement, str):
        raise TypeError("complete_statement() argument must be str")
    if apsw.complete(statement):
        return True
    # SQLite releases differ on a trailing '--' comment with no newline after the last ';'
    # (3.40 says complete, 3.54 does not); answer as the stdlib module commonly does.
    return "--" in statement and bool(apsw.complete(statement + "\n"))


# --- statement classification: heliosdb.statements (shared with the audit) ---------------

from .statements import (  # noqa: E402 - the short private names keep the hot path's text
    ATTACH as _ATTACH,
    DML as _DML, EMPTY as _EMPTY, MULTI as _MULTI, NAMED as _NAMED, RETURNING as _RETURNING,
    TRAILING as _TRAILING, StatementCache as _StatementCache,
    NUMBERED_ARE_NAMED as _NUMBERED_ARE_NAMED,
    classify as _classify, first_statement as _first_statement,
    named_parameters as _named_parameters,
    split_statements,
)

# Flag masks of the execute path, computed once (module globals are not constant-folded:
# written inline, each ``|`` ran on every statement).
_SPECIAL = _MULTI | _TRAILING | _NAMED | _ATTACH
_DML_OR_RETURNING = _DML | _RETURNING


def _warn_named_sequence(sql: str) -> None:
    import warnings

    for index, name in _named_parameters(sql, _NUMBERED_ARE_NAMED):
        warnings.warn(
            f"Binding {index} ('{name}') is a named parameter, but you supplied a "
            "sequence which requires nameless (qmark) placeholders. Starting with Python "
            "3.14 an sqlite3.ProgrammingError will be raised.",
            DeprecationWarning, skip_file_prefixes=(_PACKAGE_DIR,))


def _warn_named_rows(rows: Iterable[Any], sql: str) -> Iterator[Any]:
    """executemany's parameter sets, with sqlite3's warning (3.12+) for each one that is
    bound as a sequence to a statement with named parameters, as it is bound."""
    for row in rows:
        if not isinstance(row, dict):
            _warn_named_sequence(sql)
        yield row


# --- errors raised inside user callbacks ------------------------------------------------

from .apsw_errors import CallbackFailed as _CallbackFailed  # noqa: E402

_callback_tracebacks = False
_UnraisableHookArgs: Any = None


def enable_callback_tracebacks(flag: bool, /) -> None:
    """Report exceptions raised in user callbacks to ``sys.unraisablehook`` (whose default
    prints the traceback), as sqlite3 does; off by default."""
    global _callback_tracebacks
    _callback_tracebacks = bool(flag)


def _unraisable(obj: Any, exc: BaseException) -> None:
    """What sqlite3's ``print_or_clear_traceback`` does: when tracebacks are enabled, pass
    ``sys.unraisablehook`` the exception and the callable it came from (3.10: print it as
    PyErr_Print does)."""
    if not _callback_tracebacks:
        return
    import sys

    if _versions.CALLBACK_TRACEBACKS_PRINTED:
        # What PyErr_Print does: remember the error as the last one, then sys.excepthook.
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return
    global _UnraisableHookArgs
    if _UnraisableHookArgs is None:
        # The hook's argument type is not exposed: learn it from one unraisable exception.
        seen: list = []
        old = sys.unraisablehook

        class _Probe:
            def __del__(self) -> None:
                raise RuntimeError

        sys.unraisablehook = seen.append
        try:
            _Probe()
        finally:
            sys.unraisablehook = old
        _UnraisableHookArgs = type(seen[0])
    sys.unraisablehook(_UnraisableHookArgs(
        (type(exc), exc, exc.__traceback__, None, obj)))


def _callback_error(obj: Any, exc: BaseException, message: str) -> _CallbackFailed:
    """Report ``exc`` (raised by the user callable ``obj``) and the error to raise."""
    _unraisable(obj, exc)
    if _versions.PLAIN_CALLBACK_ERRORS:
        return _CallbackFailed(message)
    if isinstance(exc, MemoryError):
        return _CallbackFailed("", MemoryError)
    if isinstance(exc, OverflowError):
        return _CallbackFailed("string or blob too big", errors.DataError)
    return _CallbackFailed(message)


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _sql_result(result: Any) -> Any:
    """A user callable's result as SQLite takes it; raises what sqlite3 raises for a value
    it cannot store (OverflowError, UnicodeEncodeError, BufferError), TypeError otherwise."""
    if result is None or type(result) is float or type(result) is bytes:
        return result
    if isinstance(result, int):
        if not _INT64_MIN <= result <= _INT64_MAX:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return int(result)
    if isinstance(result, str):
        if not result.isascii():
            result.encode("utf-8")  # lone surrogates: UnicodeEncodeError, as sqlite3
        return result
    if isinstance(result, float):
        return float(result)
    if isinstance(result, (bytes, bytearray)):
        return bytes(result)
    if isinstance(result, memoryview):
        if not result.c_contiguous:
            raise BufferError("underlying buffer is not C-contiguous")
        return result.tobytes()
    raise _UnsupportedResult


class _UnsupportedResult(Exception):
    pass


def _errstr(exc: BaseException) -> str:
    """SQLite's generic text for an APSW error's result code (``sqlite3_errstr``)."""
    code = getattr(exc, "result", None)
    texts = {apsw.SQLITE_MISUSE: "bad parameter or other API misuse",
             apsw.SQLITE_ERROR: "SQL logic error", apsw.SQLITE_RANGE: "column index out of range"}
    return texts.get(code, str(exc))


def _wrap_function(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        try:
            return _sql_result(func(*args))
        except _UnsupportedResult:
            raise _CallbackFailed("user-defined function raised exception") from None
        except BaseException as exc:  # noqa: BLE001 - reported as sqlite3 reports it
            raise _callback_error(func, exc, "user-defined function raised exception") \
                from exc

    return call


def _aggregate_factory(cls: Callable[[], Any], window: bool) -> Callable[[], Any]:
    """Adapt a sqlite3 aggregate class (step/finalize, and value/inverse for a window
    function) to APSW's factory protocol.

    As in sqlite3, the class is instantiated on the first call only: with no rows the
    result is NULL and neither ``__init__`` nor ``finalize`` runs. Errors are reported as
    sqlite3 reports them, except that SQLite drops a window function's finalize error.
    """

    def factory() -> Any:
        state: list = []  # [instance] once the first row arrived

        def instance() -> Any:
            if not state:
                try:
                    state.append(cls())
                except BaseException as exc:  # noqa: BLE001
                    raise _callback_error(
                        cls, exc, "user-defined aggregate's '__init__' method raised error"
                    ) from exc
            return state[0]

        def method(name: str) -> Callable[..., Any]:
            def f(_ctx: Any, *args: Any) -> Any:
                inst = instance()
                try:
                    fn = getattr(inst, name)
                except AttributeError as exc:
                    if _versions.PLAIN_CALLBACK_ERRORS:
                        raise  # 3.10: the AttributeError itself
                    raise _callback_error(
                        cls, exc, f"user-defined aggregate's '{name}' method not defined"
                    ) from exc
                try:
                    result = fn(*args)
                    return _sql_result(result) if name == "value" else None
                except _UnsupportedResult:
                    raise _CallbackFailed(
                        f"user-defined aggregate's '{name}' method raised error") from None
                except BaseException as exc:  # noqa: BLE001
                    raise _callback_error(
                        cls, exc, f"user-defined aggregate's '{name}' method raised error"
                    ) from exc
            return f

        def final(_ctx: Any) -> Any:
            if not state:
                return None
            try:
                inst = instance()
                try:
                    fn = getattr(inst, "finalize")
                except AttributeError as exc:
                    raise _callback_error(
                        cls, exc, _versions.missing_finalize()) from exc
                try:
                    return _sql_result(fn())
                except _UnsupportedResult:
                    raise _CallbackFailed(
                        "user-defined aggregate's 'finalize' method raised error") from None
                except BaseException as exc:  # noqa: BLE001
                    raise _callback_error(
                        cls, exc, "user-defined aggregate's 'finalize' method raised error"
                    ) from exc
            except _CallbackFailed:
                if window:
                    return None  # SQLite does not report a window finalize error
                raise

        if window:
            return (None, method("step"), final, method("value"), method("inverse"))
        return (None, method("step"), final)

    return factory


def _wrap_aggregate(cls: Callable[[], Any]) -> Callable[[], Any]:
    return _aggregate_factory(cls, window=False)


from .apsw_errors import raise_translated as _raise_translated  # noqa: E402
from .apsw_errors import translate_error as _translate  # noqa: E402


class _Drained:
    """Stands in for the APSW cursor of a statement the audit ran to its end (see
    :class:`heliosdb.audit.capture.StatementRun`): serves its rows and description as APSW
    would; anything else goes to the real cursor."""

    __slots__ = ("real", "_rows", "_desc")

    def __init__(self, real: Any, rows: list, desc: Any) -> None:
        self.real = real
        self._rows = iter(rows)
        self._desc = desc

    def __iter__(self) -> "_Drained":
        return self

    def __next__(self) -> Any:
        return next(self._rows)

    def get_description(self) -> Any:
        return self._desc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


# --- Row --------------------------------------------------------------------------------


class Row:
    """A row that can be indexed by position and, case-insensitively, by column name."""

    __slots__ = ("_description", "_values")

    def __init__(self, cursor: "Cursor", data: tuple, /) -> None:
        if not issubclass(type(cursor), Cursor):
            raise TypeError("Row() argument 1 must be heliosdb.Cursor")
        if not isinstance(data, tuple):
            raise TypeError("Row() argument 2 must be tuple")
        self._description = cursor.description
        self._values = data

    def keys(self) -> list[str]:
        """The column names, in order."""
        return [d[0] for d in self._description] if self._description else []

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if self._description:
                # sqlite3: the first column whose name is equal, or equal ignoring ASCII
                # case when both names are ASCII.
                lowered = key.lower() if key.isascii() else None
                for i, d in enumerate(self._description):
                    name = d[0]
                    if name == key or (lowered is not None and name.isascii()
                                       and name.lower() == lowered):
                        return self._values[i]
            raise IndexError("No item with that key")
        if isinstance(key, slice):
            return self._values[key]
        if isinstance(key, int) or hasattr(key, "__index__"):
            return self._values[key]
        raise IndexError("Index must be int or string")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._description == other._description and self._values == other._values

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return not self == other

    def __hash__(self) -> int:
        return hash(self._description) ^ hash(self._values)

    def __repr__(self) -> str:
        return f"<heliosdb.Row object at {hex(id(self))}>"


Sequence.register(Row)  # as sqlite3.Row is a collections.abc.Sequence


# --- Cursor -------------------------------------------------------------------------------


# Statements that yield no rows run on spare APSW cursors the connection keeps (Connection.
# _spare) rather than on one made for them. Not on Python 3.10: APSW 3.54.0, the newest
# there, leaks a reference to every live cursor of a connection each time it makes a
# cursor, and a spare one so leaked would keep a connection dropped without close() alive.
_SPARE_CURSORS = not _versions.PY310

# A "bound copy" (written out where it is used: a function would cost a frame): a list of
# parameters is bound as a tuple copy (APSW reads a list while it binds it; an adapter that
# changed the list meanwhile crashed the process, CPython bpo-41662), the list itself left
# in conn._binding_source for the binding hook to watch (Connection._convert_binding),
# with its length in conn._binding_len; set back to None once the statement ran.


def _type_name(obj: Any) -> str:
    """How sqlite3's argument errors name the type of ``obj`` ("None" for None)."""
    return "None" if obj is None else type(obj).__name__


# Cursor._plain_sql when there is none: no argument of execute() is this object.
_NO_SQL = object()

# Cursor._peek of a cursor reset by a 3.10 rollback(): fetching raises InterfaceError.
_RESET_BY_ROLLBACK: tuple = ("reset by rollback",)


class Cursor:
    """A DB-API cursor with the stdlib ``sqlite3.Cursor`` semantics."""

    # Class-level defaults, as sqlite3.Cursor exposes them as attributes; the per-cursor
    # state starts from these too, so that making a cursor (which conn.execute() does for
    # every statement) sets only what differs.
    rowcount: int = -1
    lastrowid: Optional[int] = None
    row_factory: Optional[Callable[["Cursor", tuple], Any]] = None
    _arraysize = 1
    _closed = False
    _active = False  # an APSW statement may still have rows
    _rows_kind = False  # the last statement could return rows
    _sql: Optional[str] = None
    _params: Any = None
    _desc: Any = None
    _desc_known = True
    _converters: Optional[list] = None
    _count_at_end = False
    _end_count: Optional[int] = None  # the RETURNING count to report at the end (audited)
    # DML ... RETURNING: the row read ahead (see _next_raw); _RESET_BY_ROLLBACK on 3.10.
    _peek: Optional[tuple] = None
    _locked = False  # converters / row factory running: the cursor may not be re-entered
    _ran_dml = False  # a DML statement ran on a spare APSW cursor (see execute())
    # The SQL text (that very object) of the plain DML statement this cursor last ran on
    # its own APSW cursor, while the state it left (the class defaults but rowcount and
    # lastrowid) stands: running it again changes nothing else (see execute()). Anything
    # else that changes the cursor's state sets it back to _NO_SQL.
    _plain_sql: Any = _NO_SQL  # (not None: that would match execute(None))

    _connection: Any = None  # set below: an uninitialised cursor's
    # The APSW cursor, made when a statement first needs its own (one that yields rows, or
    # anything but plain DML): a statement that yields none runs on one of the connection's
    # spare APSW cursors (Connection._spare), as making one costs more than the statement.
    _cur: Any = None

    def __init__(self, connection: "Connection", /) -> None:
        if not isinstance(connection, Connection):
            raise TypeError("Cursor() argument must be a heliosdb.Connection")
        if self._connection is not _UNINIT_CONNECTION:  # __init__ again
            if self._locked:
                raise ProgrammingError("Recursive use of cursors not allowed.")
            connection._check()
            self._reinit()
        else:
            connection._check()
        self._connection = connection
        # The class defaults, made the instance's: execute() reads both on every audited
        # statement, and Python 3.11 reads an instance attribute much more cheaply than
        # a class one (about 200 instructions each).
        self._plain_sql = _NO_SQL
        self._closed = False
        if connection._serial is not None:
            share_cursor(self)
        if connection._cursors is not None:
            connection._cursors.add(self)
        if connection.row_factory is not None:
            self.row_factory = connection.row_factory

    # What __init__ called again resets, as sqlite3 does: the statement (the APSW cursor
    # of the connection it belonged to, its rows and description), rowcount, lastrowid,
    # arraysize, closed and row_factory. (Attributes of a subclass stay.)
    _REINIT = ("_cur", "_plain_sql", "_ran_dml", "_active", "_rows_kind", "_sql", "_params",
               "_desc", "_desc_known", "_converters", "_count_at_end", "_end_count", "_peek",
               "rowcount", "lastrowid", "_arraysize", "_closed", "row_factory")

    def _reinit(self) -> None:
        state = vars(self)
        for name in self._REINIT:
            state.pop(name, None)  # back to the class default

    @property
    def arraysize(self) -> int:
        """Rows ``fetchmany()`` returns by default."""
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        if not isinstance(value, int):
            raise TypeError("'int' expected for arraysize")
        self._arraysize = value

    # -- helpers --
    @property
    def connection(self) -> "Connection":
        """The connection this cursor belongs to."""
        return self._connection

    def _check(self) -> None:
        if self._locked:
            raise ProgrammingError("Recursive use of cursors not allowed.")
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self._connection._check()

    def _reset(self) -> None:
        self._plain_sql = _NO_SQL
        self._active = False
        self._peek = None
        self._desc = None
        self._desc_known = True
        self._converters = None

    def _prepare_params(self, parameters: Any, sql: Optional[str] = None) -> Any:
        """Validate parameters the way sqlite3 does and apply base-type adapters. (With
        ``sql``: sqlite3 compiles the statement before it looks at the parameters, so an
        error in the SQL is the one raised.)"""
        conn = self._connection
        conn._binding_source = None
        if type(parameters) is tuple and not _base_type_adapted:
            return parameters  # the common case first (executemany calls this per row)
        if parameters is None or parameters == ():
            return parameters
        if isinstance(parameters, (tuple, list)):
            if _base_type_adapted:
                return tuple(conn._adapt_value(v) for v in parameters)
            if isinstance(parameters, list):
                # APSW reads a list while binding it; an adapter or __conform__ that
                # mutates the list then crashed the process (CPython's bpo-41662 test).
                # Bind a copy, and let the binding hook raise sqlite3's IndexError if the
                # list shrank meanwhile.
                conn._binding_source = parameters
                conn._binding_len = len(parameters)
                return tuple(parameters)
            return parameters
        if isinstance(parameters, dict):
            if _base_type_adapted:
                return {k: self._connection._adapt_value(v) for k, v in parameters.items()}
            return parameters
        if isinstance(parameters, Mapping):
            # sqlite3 binds only dicts by name; another mapping is taken as a sequence,
            # and fails on its first item.
            parameters[0]  # raises what the mapping raises (KeyError, as sqlite3 shows)
        if not hasattr(parameters, "__len__") or not hasattr(parameters, "__getitem__"):
            if sql is not None:
                Connection.__call__(conn, sql)  # compiles it: raises what SQLite says
            raise _versions.unsupported_parameters()
        # As sqlite3 reads a sequence: len(), then each item by index (copied first, so
        # that nothing the adapters do to the sequence reaches what is being bound).
        n = len(parameters)
        adapt_value = self._connection._adapt_value
        return tuple([adapt_value(parameters[i]) for i in range(n)])

    # -- execution --
    def execute(self, sql: str, parameters: Any = (), /) -> "Cursor":
        """Execute one SQL statement, binding ``parameters`` (sequence or mapping)."""
        conn = self._connection
        # The hot path of a reused cursor: the plain DML statement it ran last, again (see
        # _plain_sql), with a tuple, dict or list of parameters, inside a transaction or
        # with none to open. Only rowcount and lastrowid change. (A closed cursor has no
        # _plain_sql, so conn._closed and the thread are what is left to check.)
        # (Tuples first, and alone: each bytecode added there costs about 20 instructions
        # per statement.)
        if sql is self._plain_sql:
            if type(parameters) is tuple and not _base_type_adapted \
                    and not conn._closed and not (
                        conn._check_same_thread and _get_ident() != conn._thread_id):
                db = conn._apsw
                if conn._begin_sql is None or not db.get_autocommit():
                    try:
                        self._cur.execute(sql, parameters)
                    except BaseException as exc:  # noqa: BLE001
                        self._failed()  # (sets _plain_sql back to _NO_SQL)
                        _raise_sql_error(conn, exc, sql)
                    self.rowcount = db.changes()
                    self.lastrowid = db.last_insert_rowid()
                    return self
            elif ((tp := type(parameters)) is list or tp is dict) \
                    and not _base_type_adapted and not conn._closed and not (
                        conn._check_same_thread and _get_ident() != conn._thread_id):
                db = conn._apsw
                if conn._begin_sql is None or not db.get_autocommit():
                    try:
                        if tp is list:  # (a "bound copy": see the note before _type_name)
                            conn._binding_source = parameters
                            conn._binding_len = len(parameters)
                            self._cur.execute(sql, tuple(parameters))
                        else:
                            self._cur.execute(sql, parameters)
                    except BaseException as exc:  # noqa: BLE001
                        self._failed()  # (sets _binding_source back to None too)
                        _raise_sql_error(conn, exc, sql)
                    conn._binding_source = None
                    self.rowcount = db.changes()
                    self.lastrowid = db.last_insert_rowid()
                    return self
        # The hot path: the checks below are _check() inlined; it raises the right error.
        if self._closed or conn._closed or (
                conn._check_same_thread and _get_ident() != conn._thread_id):
            self._check()
        flags = conn._stmt_flags.get(sql)
        if flags is None:
            if not isinstance(sql, str):
                raise TypeError(f"execute() argument 1 must be str, not {_type_name(sql)}")
            flags = conn._stmt_cache.flags(sql)
        if flags & _SPECIAL:
            if flags & _MULTI:
                # sqlite3 compiles the first statement before it looks at the rest: an
                # error in it is the one raised.
                Connection.__call__(conn, sql)
                raise _versions.multiple_statements()
            if flags & _ATTACH and conn._audit is None and not conn._attaching:
                # A connection without audit (an audited one's session does this) may
                # not write a database that has an audit log of its own: it would be
                # recorded nowhere. Run the ATTACH, then look at what it attached.
                conn._attaching = True
                try:
                    self.execute(sql, parameters)
                finally:
                    conn._attaching = False
                conn._refuse_audited_attachments()
                return self
            if flags & _NAMED and not isinstance(parameters, dict):
                _warn_named_sequence(sql)
            if flags & _TRAILING:
                sql = _first_statement(sql)
        tp = type(parameters)
        if (tp is tuple or tp is dict) and not _base_type_adapted:
            params = parameters  # (bound as they are: what _prepare_params returns)
            conn._binding_source = None
        elif tp is list and not _base_type_adapted:  # _prepare_params's list, inlined
            conn._binding_source = parameters  # (a "bound copy")
            conn._binding_len = len(parameters)
            params = tuple(parameters)
        else:
            params = self._prepare_params(parameters, sql)
        db = conn._apsw
        if conn._audit is not None:
            self._sql = sql
            self._params = params
            self._active = False
            self._desc = None
            self._converters = None
            self._count_at_end = False
            self.rowcount = -1
            cur = self._cur
            if cur is None or type(cur) is _Drained:  # (type(): x.__class__ is no cheap read)
                cur = self._apsw_cursor()
            # The hook: the audit session runs the statement and records it, and decides
            # on BEGIN under its lock (threads sharing the connection).
            outer, conn._begin_cursor = conn._begin_cursor, cur  # for _begin() on 3.10
            try:
                run = conn._audit.execute(
                    cur, sql, params, (flags & _DML) != 0 and conn._begin_sql is not None)
            except BaseException:
                if not _SPARE_CURSORS:
                    self._close_apsw_cursor()
                raise
            finally:
                conn._begin_cursor = outer
                conn._binding_source = None
            if flags & _DML_OR_RETURNING == _DML and run[2] is None:
                # _after_audited() for DML without RETURNING, inlined (the audit's hot path)
                self.rowcount = run[0]
                self.lastrowid = run[1]
                self._rows_kind = False
                self._peek = None
                self._active = True
                self._desc_known = False
            else:
                self._after_audited(flags, run)
            return self
        # (DESIGN.md 1, speed: no second Python frame per statement; the state is set once,
        # after the statement ran, or reset by _failed() when it did not.)
        cur = self._cur
        if flags & _DML_OR_RETURNING == _DML:
            # DML without RETURNING yields no rows: it needs no cursor of its own after it
            # ran, so (unless this cursor has one already) a spare one of the connection
            # runs it. Its state afterwards is the class defaults but rowcount, lastrowid.
            spare = None
            if cur is None:
                if _SPARE_CURSORS and not self._ran_dml:
                    # Its first DML (conn.execute() makes a cursor per statement): a spare
                    # cursor runs it. One that runs DML again gets its own from the next
                    # statement on: taking and returning a spare costs more than keeping
                    # one (callgrind: 15.1k against 12.7k instructions per INSERT).
                    self._ran_dml = True
                    spare = conn._spare
                    try:
                        cur = spare.pop()
                    except IndexError:  # none yet, or all in use (nested, other threads)
                        cur = db.cursor()
                    if flags == _DML and not _base_type_adapted:
                        plain = conn._plain_dml
                        if len(plain) >= 256:
                            plain.clear()
                        plain[sql] = None
                else:
                    cur = self._cur = db.cursor()
            try:
                if conn._begin_sql is not None and db.get_autocommit():
                    conn._implicit_begin(sql, None if _SPARE_CURSORS else cur)
                cur.execute(sql, params)
            except BaseException as exc:  # noqa: BLE001
                if spare is not None:
                    spare.append(cur)
                self._failed()
                _raise_sql_error(conn, exc, sql)
            if spare is not None:
                spare.append(cur)
            elif flags == _DML:
                self._plain_sql = sql  # the next run of this text takes the hot path
            conn._binding_source = None  # (the paths that bind tuples never set it)
            self.rowcount = db.changes()
            self._count_at_end = False
            self._rows_kind = False
            self._active = False
            self._desc = None
            self._desc_known = True
            self._converters = None
            self._peek = None
            self.lastrowid = db.last_insert_rowid()
            return self
        if cur is None:
            cur = self._cur = db.cursor()
        else:
            self._plain_sql = _NO_SQL  # (only a cursor with an APSW cursor of its own has one)
        self._sql = sql
        self._params = params
        try:
            if flags & _DML and conn._begin_sql is not None and db.get_autocommit():
                conn._implicit_begin(sql, None if _SPARE_CURSORS else cur)  # ... RETURNING
            cur.execute(sql, params)
        except BaseException as exc:  # noqa: BLE001
            self._failed()
            _raise_sql_error(conn, exc, sql)
        conn._binding_source = None
        # _after_execute(flags), inlined.
        if flags & _DML:  # ... RETURNING
            self.rowcount = 0
            self._count_at_end = True
            self._end_count = None
            self._rows_kind = True
        else:
            self.rowcount = -1
            self._count_at_end = False
            self._rows_kind = not (flags & _EMPTY)
        self._desc = None
        self._converters = None
        self._peek = None
        self._active = True
        self._desc_known = False
        self.lastrowid = db.last_insert_rowid()
        return self

    def _failed(self) -> None:
        """The state after a statement that did not run (or failed while running)."""
        self._plain_sql = _NO_SQL
        self._active = False
        self._desc = None
        self._desc_known = True
        self._converters = None
        self._count_at_end = False
        self._peek = None
        self.rowcount = -1
        self._connection._binding_source = None

    def _apsw_cursor(self) -> Any:
        """The APSW cursor again, after an audited statement's rows were served from a
        :class:`_Drained` stand-in (the audit runs statements on the real one)."""
        cur = self._cur
        if cur is None:
            cur = self._cur = self._connection._apsw.cursor()
        elif cur.__class__ is _Drained:
            cur = self._cur = cur.real
        return cur

    def _close_apsw_cursor(self) -> None:
        """Python 3.10: close this cursor's APSW cursor after an audited statement failed.
        The audit made cursors of its own meanwhile (to roll back, to record the attempt),
        each leaking a reference to this one (APSW 3.54.0, see _SPARE_CURSORS); closed,
        it no longer holds the connection, which can then be collected when dropped."""
        cur = self._cur
        self._cur = None
        if cur is not None:
            try:
                cur.close(True)
            except apsw.Error:
                pass

    def _after_audited(self, flags: int, run: Any) -> None:
        """Record rowcount, lastrowid and result state after an audited statement ran:
        ``run`` (a :class:`heliosdb.audit.capture.StatementRun`) holds the counts read
        before its event was written, and its rows when the audit ran it to its end."""
        changes, self.lastrowid, rows, description = run
        if rows is not None:
            self._cur = _Drained(self._cur, rows, description)
        if flags & _DML:
            if not flags & _RETURNING:
                self.rowcount = changes
                self._rows_kind = False
            else:
                self._rows_kind = True
                if rows is None or rows:
                    # sqlite3 counts RETURNING changes once the last row has been read.
                    self.rowcount = 0
                    self._count_at_end = True
                    self._end_count = None if rows is None else changes
                else:
                    self.rowcount = changes
        else:
            self._rows_kind = not (flags & _EMPTY)
        self._peek = None
        self._active = True
        self._desc_known = False

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> "Cursor":
        """Execute a DML statement once for each parameter set of an iterable."""
        self._check()
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {_type_name(sql)}")
        if "\x00" in sql:  # refused before anything runs, even with no parameter sets
            raise _versions.null_character()
        conn = self._connection
        flags = conn._stmt_cache.flags(sql)
        if flags & (_MULTI | _TRAILING):
            if flags & _MULTI:
                # sqlite3 compiles the first statement before it looks at the rest: an
                # error in it is the one raised.
                Connection.__call__(conn, sql)
                raise _versions.multiple_statements()
            sql = _first_statement(sql)
        if not flags & _DML:
            # sqlite3 refuses read-only statements here (sqlite3_stmt_readonly); anything
            # else (DDL, PRAGMA with a value ...) runs.
            seq_of_parameters = iter(seq_of_parameters)
            first = next(seq_of_parameters, None)
            if first is not None:
                import itertools

                seq_of_parameters = itertools.chain([first], seq_of_parameters)
                if self._is_readonly(sql, self._prepare_params(first, sql)):
                    raise ProgrammingError("executemany() can only execute DML statements.")
        if flags & _NAMED:
            seq_of_parameters = _warn_named_rows(iter(seq_of_parameters), sql)
        self._reset()
        self.rowcount = -1
        self._sql = sql
        db = conn._apsw
        if type(seq_of_parameters) in (list, tuple) and not _base_type_adapted \
                and set(map(type, seq_of_parameters)) <= {tuple}:
            # Tuples of parameters need no preparation: APSW binds them as they are, with no
            # Python frame per row (DESIGN.md 1). (A list iterator tolerates mutation.)
            conn._binding_source = None
            params_iter: Any = seq_of_parameters
        else:
            params_iter = map(functools.partial(self._prepare_params, sql=sql),
                              seq_of_parameters)
        before = db.total_changes()
        if conn._audit is not None:
            cur = self._apsw_cursor()
            outer, conn._begin_cursor = conn._begin_cursor, cur  # for _begin() on 3.10
            try:
                audited_rows = conn._audit.executemany(cur, sql, params_iter,
                                                       begin=conn._begin_sql is not None)
            finally:
                conn._begin_cursor = outer
                conn._binding_source = None
        else:
            cur = self._cur
            spare = None
            if cur is None:  # it yields no rows: a spare cursor of the connection runs it
                if _SPARE_CURSORS:
                    spare = conn._spare
                    try:
                        cur = spare.pop()
                    except IndexError:
                        cur = db.cursor()
                else:
                    cur = self._cur = db.cursor()
            try:
                if flags & _DML and conn._begin_sql is not None and db.get_autocommit():
                    # As sqlite3: compiled first, then BEGIN, even with no parameter sets.
                    conn._implicit_begin(sql, None if _SPARE_CURSORS else cur)
                for _ in cur.executemany(sql, params_iter, can_cache=True):
                    pass
            except BaseException as exc:  # noqa: BLE001
                _raise_sql_error(conn, exc, sql)
            finally:
                conn._binding_source = None
                if spare is not None:
                    spare.append(cur)
        if not flags & _DML:
            self.rowcount = -1
        elif conn._audit is not None:
            self.rowcount = audited_rows  # the batch's own count, without the audit rows
        else:
            self.rowcount = db.total_changes() - before
        self._active = False
        self._rows_kind = False
        return self

    def _is_readonly(self, sql: str, params: Any) -> bool:
        """Prepare ``sql`` and stop before it runs, to ask SQLite if it is read-only."""
        probe = self._connection._apsw.cursor()
        seen: list = []

        def trace(cursor: Any, _sql: str, _bindings: Any) -> bool:
            seen.append(cursor.is_readonly)
            return False

        probe.exec_trace = trace
        try:
            _probing(self._connection, lambda: probe.execute(sql, params, can_cache=True))
        except apsw.ExecTraceAbort:
            pass
        except BaseException as exc:  # noqa: BLE001
            _raise_translated(exc, sql)
        return bool(seen and seen[0])

    def executescript(self, sql_script: str, /) -> "Cursor":
        """Commit any pending transaction, then run every statement of a script."""
        self._check()
        if not isinstance(sql_script, str):
            raise _versions.script_not_str(sql_script)
        sql_script = _versions.script_text(sql_script)
        conn = self._connection
        legacy = conn._autocommit is not True and conn._autocommit is not False
        if len(sql_script) * 4 > conn._apsw.limit(apsw.SQLITE_LIMIT_SQL_LENGTH):
            # sqlite3 measures the whole script against SQLITE_LIMIT_SQL_LENGTH.
            if len(sql_script.encode("utf-8")) > conn._apsw.limit(
                    apsw.SQLITE_LIMIT_SQL_LENGTH):
                raise errors.DataError("query string is too large")
        if legacy:
            conn.commit()  # legacy transaction control: sqlite3 commits first
        self._reset()
        self.rowcount = -1
        self._sql = None
        if conn._audit is not None:
            cur = self._apsw_cursor()
            conn._audit.executescript(cur, sql_script)
        else:
            db = conn._apsw
            try:
                # One statement at a time, as sqlite3 does (the trace callback then sees
                # each statement's own text, leading whitespace included).
                cur = self._cur
                if cur is None:
                    cur = self._cur = db.cursor()
                for stmt in split_statements(sql_script):
                    for _ in cur.execute(stmt, can_cache=False):
                        pass
                    if "attach" in stmt.lower() and _classify(stmt) & _ATTACH:
                        conn._refuse_audited_attachments()  # as execute() does
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, errors.Error):
                    raise
                _raise_translated(exc, None, db)
        self._active = False
        self._rows_kind = False
        return self

    # -- results --
    def _raw_description(self) -> Any:
        """APSW's ((name, decltype), ...) of the last statement, or None."""
        if self._active:
            try:
                return self._cur.get_description()
            except apsw.ExecutionCompleteError:
                self._active = False
            except apsw.Error as exc:
                raise _translate(self._connection._apsw, exc) from exc
        if not self._rows_kind or self._sql is None:
            return None
        # The statement already finished (APSW drops its description then): prepare it
        # again and stop before it runs, to read its columns.
        probe = self._connection._apsw.cursor()
        captured: list = []

        def trace(cursor: Any, sql: str, bindings: Any) -> bool:
            captured.append(cursor.get_description())
            return False

        probe.exec_trace = trace
        try:
            _probing(self._connection,
                     lambda: probe.execute(self._sql, self._params, can_cache=True))
        except apsw.ExecTraceAbort:
            pass
        except apsw.Error:
            return None
        return captured[0] if captured else None

    def _build_description(self) -> None:
        raw = self._raw_description()
        self._desc_known = True
        if not raw:
            self._desc = None
            return
        parse_colnames = self._connection._detect_types & PARSE_COLNAMES
        self._desc = tuple(
            (_strip_colname(name) if parse_colnames else name, None, None, None, None, None, None)
            for name, _decl in raw
        )

    @property
    def description(self) -> Optional[tuple]:
        """Column names of the last query as 7-tuples (name, None x 6), or None."""
        if self._closed:
            return self._desc
        if not self._desc_known:
            self._build_description()
        return self._desc

    def _setup_converters(self) -> None:
        conn = self._connection
        detect = conn._detect_types
        raw = self._raw_description()
        if not self._desc_known:
            self._build_description()
        convs: list = []
        any_conv = False
        if raw and converters:
            for name, decl in raw:
                conv = None
                if detect & PARSE_COLNAMES:
                    lb = name.find("[")
                    if lb >= 0:
                        rb = name.find("]", lb)
                        if rb >= 0:
                            conv = converters.get(name[lb + 1:rb].upper())
                if conv is None and detect & PARSE_DECLTYPES and decl:
                    key = decl.split("(")[0].strip().split(" ")[0]
                    conv = converters.get(key.upper())
                convs.append(conv)
                any_conv = any_conv or conv is not None
        self._converters = convs if any_conv else []

    def _convert(self, row: tuple) -> Any:
        conn = self._connection
        if conn._detect_types:
            if self._converters is None:
                self._setup_converters()
            if self._converters:
                row = tuple(
                    v if (c is None or v is None) else _apply_converter(c, v)
                    for v, c in zip(row, self._converters)
                )
        tf = conn.text_factory
        if tf is not str:
            row = tuple(_apply_text_factory(tf, v) if isinstance(v, str) else v for v in row)
        rf = self.row_factory
        if rf is not None:
            if not self._desc_known:
                self._build_description()
            return rf(self, row)
        return row

    def _returning_count(self) -> int:
        """rowcount of DML ... RETURNING once its last row is read: SQLite's count, or
        the one an audited statement run to its end left (the audit wrote since)."""
        if self._end_count is not None:
            count, self._end_count = self._end_count, None
            return count
        return self._connection._apsw.changes()

    def _next_raw(self) -> Optional[tuple]:
        if not self._active:
            return None
        conn = self._connection
        if (conn._detect_types or self.row_factory is not None) and not self._desc_known:
            self._build_description()
        try:
            if self._count_at_end or self._peek is not None:
                return self._next_returning()
            return next(self._cur)
        except StopIteration:
            self._active = False
            if self._count_at_end:
                self._count_at_end = False
                self.rowcount = self._returning_count()
            return None
        except BaseException as exc:  # noqa: BLE001
            if self._peek is not _RESET_BY_ROLLBACK:  # that one raises until re-executed
                self._active = False
            self._raise_fetch_error(exc)
            raise  # unreachable

    def _raise_fetch_error(self, exc: BaseException) -> None:
        """Raise what sqlite3 raises for an error while a row was read."""
        if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
            # sqlite3 names the column and its text. APSW does not say which column it
            # failed to decode: a one-column row is the only one heliosdb can name.
            try:
                columns = self._cur.get_description()
            except apsw.Error:
                columns = ()
            if len(columns) == 1:
                name = columns[0][0]
                text = exc.object.decode("utf-8", "replace")
                raise OperationalError(
                    f"Could not decode to UTF-8 column '{name}' with text '{text}'") from exc
        _raise_translated(exc, None, self._connection._apsw)

    def _reset_by_rollback(self) -> None:
        """Python 3.10's rollback(): the cursor's statement is reset, and fetching from it
        raises InterfaceError until it executes again (its description stays)."""
        if self._closed:
            return
        if not self._desc_known:
            self._build_description()
        self._plain_sql = _NO_SQL
        if self._cur is not None:
            try:
                self._cur.close(True)
            except apsw.Error:
                pass
        self._cur = self._connection._apsw.cursor()
        self._active = True  # so that fetching reaches _next_returning, which raises
        self._count_at_end = False
        self._peek = _RESET_BY_ROLLBACK

    def _next_returning(self) -> tuple:
        """The next row of DML ... RETURNING. sqlite3 steps one row ahead, so its
        rowcount is counted as soon as the last row has been read: do the same."""
        row = self._peek
        if row is None:
            row = next(self._cur)
        elif row is _RESET_BY_ROLLBACK:
            raise InterfaceError(_versions.FETCH_ACROSS_ROLLBACK)
        else:
            self._peek = None
        if self._count_at_end:
            try:
                self._peek = next(self._cur)
            except StopIteration:
                self._count_at_end = False
                self.rowcount = self._returning_count()
        return row

    def fetchone(self) -> Any:
        """The next row, or None when there are no more."""
        conn = self._connection
        # The hot path: a plain row of a statement still running. (A closed cursor is not
        # active; a locked one has a row factory or converters; a connection closed since
        # closed the APSW cursor, whose error leads to _check().)
        if self._active and self._peek is None and not self._count_at_end \
                and self.row_factory is None and conn.text_factory is str \
                and not conn._detect_types and not (
                    conn._check_same_thread and _get_ident() != conn._thread_id):
            try:
                return next(self._cur)
            except StopIteration:
                self._active = False
                return None
            except BaseException as exc:  # noqa: BLE001
                self._active = False
                self._check()
                self._raise_fetch_error(exc)
        return self._fetchone_checked()

    def _fetchone_checked(self) -> Any:
        """fetchone() with every check, whatever the row needs."""
        conn = self._connection
        if self._locked or self._closed or conn._closed or (
                conn._check_same_thread and _get_ident() != conn._thread_id):
            self._check()
        if not self._active:
            return None
        return self._fetchone()

    def _fetchone(self) -> Any:
        row = self._next_raw()
        if row is None:
            return None
        conn = self._connection
        if self.row_factory is None and conn.text_factory is str and not conn._detect_types:
            return row
        # Converters and row factories are user code: sqlite3 refuses their re-entering
        # this cursor (CPython gh-80254).
        self._locked = True
        try:
            return self._convert(row)
        finally:
            self._locked = False

    def fetchmany(self, size: Optional[int] = None) -> list:
        """Up to ``size`` (default ``arraysize``) next rows."""
        self._check()
        n = self.arraysize if size is None else size
        if n <= 0:  # sqlite3: a size of zero or less fetches everything that is left
            return self.fetchall()
        out = []
        while n > 0:
            row = self.fetchone()
            if row is None:
                break
            out.append(row)
            n -= 1
        return out

    def fetchall(self) -> list:
        """All remaining rows."""
        self._check()
        if not self._active:
            return []
        conn = self._connection
        if self.row_factory is None and conn.text_factory is str and not conn._detect_types \
                and not self._count_at_end and self._peek is None:
            try:
                rows = list(self._cur)
            except BaseException as exc:  # noqa: BLE001
                self._active = False
                self._raise_fetch_error(exc)
            self._active = False
            if self._count_at_end:
                self._count_at_end = False
                self.rowcount = self._returning_count()
            return rows
        out = []
        while True:
            row = self.fetchone()
            if row is None:
                return out
            out.append(row)

    def __iter__(self) -> "Cursor":
        return self

    def __next__(self) -> Any:
        conn = self._connection
        # fetchone()'s hot path, inlined: one Python frame per row.
        if self._active and self._peek is None and not self._count_at_end \
                and self.row_factory is None and conn.text_factory is str \
                and not conn._detect_types and not (
                    conn._check_same_thread and _get_ident() != conn._thread_id):
            try:
                return next(self._cur)
            except StopIteration:
                self._active = False
                raise
            except BaseException as exc:  # noqa: BLE001
                self._active = False
                self._check()
                self._raise_fetch_error(exc)
        row = self._fetchone_checked()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        """Close the cursor; further use raises ProgrammingError."""
        self._connection._check()
        if self._locked:
            raise ProgrammingError("Recursive use of cursors not allowed.")
        if not self._closed:
            if not self._desc_known and self._active:
                self._build_description()
            self._plain_sql = _NO_SQL  # (execute()'s hot path does not look at _closed)
            self._closed = True
            self._active = False
            if self._cur is not None:
                try:
                    self._cur.close(True)
                except apsw.Error:
                    pass

    def setinputsizes(self, sizes: Any, /) -> None:
        """Required by PEP 249; does nothing."""

    def setoutputsize(self, size: Any, column: Any = None, /) -> None:
        """Required by PEP 249; does nothing."""


_new_cursor = object.__new__


class _OpenModules:
    """The modules every connect() uses, imported once: an import statement run in a
    function costs about 10,000 instructions each time even when the module is loaded
    (W7, bench/dbapi_callgrind.py). Names are read from them at each call, as the import
    statements did."""

    __slots__ = ("config", "crypto", "keys", "capture")


_OPEN_MODULES: Optional[_OpenModules] = None
# The statement classifications of every connection with cached_statements=128 (the
# default): see Connection._finish_open.
_SHARED_STMT_CACHE = _StatementCache(128)
_SHARED_STMT_FLAGS = _SHARED_STMT_CACHE.data


def _open_modules() -> _OpenModules:
    global _OPEN_MODULES
    from . import config, crypto
    from .audit import capture
    from .crypto import keys

    mods = _OpenModules()
    mods.config, mods.crypto, mods.keys, mods.capture = config, crypto, keys, capture
    _OPEN_MODULES = mods
    return mods


def _stop_trace(_cursor: Any, _sql: str, _bindings: Any) -> bool:
    """An exec tracer that stops a statement once it is prepared (ExecTraceAbort)."""
    return False


def _uninitialised_cursor() -> None:
    raise ProgrammingError("Base Cursor.__init__ not called.")


# The connection of a Cursor whose __init__ was never called: every use raises sqlite3's
# error (and costs nothing on the hot path, which reads ``_closed``). A SimpleNamespace, not
# an instance of a class of ours: CPython 3.11 specializes no read of an attribute whose
# class-level value is of a mutable (heap) type, so such a default would have made every
# ``self._connection`` of every cursor method a generic attribute lookup.
_UNINIT_CONNECTION = Cursor._connection = types.SimpleNamespace(
    _closed=True, _check_same_thread=False,
    _check=_uninitialised_cursor, _check_open=_uninitialised_cursor)


def _strip_colname(name: str) -> str:
    # With PARSE_COLNAMES the stdlib cuts 'name [type]' at the first ' ['.
    i = name.find(" [")
    return name[:i] if i >= 0 else name


def _apply_converter(conv: Callable[[bytes], Any], value: Any) -> Any:
    data = _as_bytes(value)
    # sqlite3 reads the value with sqlite3_column_blob, NULL for zero bytes: None.
    return conv(data) if data else None


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, float):
        return repr(value).encode("ascii")
    return str(value).encode("ascii")


def _apply_text_factory(tf: Callable[[bytes], Any], value: str) -> Any:
    data = value.encode("utf-8", "surrogatepass")
    if tf is bytes:
        return data
    return tf(data)


# --- Connection ---------------------------------------------------------------------------


class Connection:
    """A DB-API connection with the stdlib ``sqlite3.Connection`` semantics.

    Create it with :func:`heliosdb.connect`. The APSW connection underneath is opened by
    :mod:`heliosdb.crypto` (plain or encrypted); the audit layer, when configured, wraps
    statement execution.
    """

    # PEP 249 optional extension: the exception classes as connection attributes.
    Warning = errors.Warning
    Error = errors.Error
    InterfaceError = errors.InterfaceError
    DatabaseError = errors.DatabaseError
    DataError = errors.DataError
    OperationalError = errors.OperationalError
    IntegrityError = errors.IntegrityError
    InternalError = errors.InternalError
    ProgrammingError = errors.ProgrammingError
    NotSupportedError = errors.NotSupportedError

    row_factory: Optional[Callable[[Cursor, tuple], Any]] = None
    text_factory: Callable[[bytes], Any] = str
    # Until __init__ succeeds (a subclass that never calls it, Connection.__new__, a failed
    # re-__init__), every operation raises "Base Connection.__init__ not called."
    _initialized = False
    _closed = True
    _apsw: Any = None
    _audit: Any = None
    _check_same_thread = False
    _thread_id = 0
    _autocommit: Any = LEGACY_TRANSACTION_CONTROL
    _cursors: Optional[weakref.WeakSet] = None
    _begin_cursor: Any = None  # see _begin
    _attaching = False  # Cursor.execute runs an ATTACH, then checks what it attached
    _serial: Any = None  # the lock of a connection threads share (check_same_thread=False)

    def _refuse_audited_attachments(self) -> None:
        """After an ATTACH on a connection without audit: an attached database that has an
        audit log of its own is detached again and refused (AuditPolicyError)."""
        from .audit.capture import refuse_audited_attachments
        from .audit.neighbourhood import audited_attachments

        try:
            refuse_audited_attachments(self._apsw, audited_attachments(self._apsw))
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc
    _plain_dml: Any = frozenset()  # (never initialised: nothing takes the shortest path)

    def __init__(self, database: Any, timeout: float = 5.0, detect_types: int = 0,
                 isolation_level: Optional[str] = "", check_same_thread: bool = True,
                 factory: Any = None, cached_statements: int = 128, uri: bool = False,
                 *, key: Any = None, config: Any = None, audit_user: Optional[str] = None,
                 audit_context: Optional[Mapping[str, Any]] = None,
                 autocommit: Any = LEGACY_TRANSACTION_CONTROL) -> None:
        if autocommit is not LEGACY_TRANSACTION_CONTROL and not _HAS_AUTOCOMMIT:
            raise TypeError("Connection() got an unexpected keyword argument 'autocommit' "
                            "(Python 3.12+)")
        if autocommit is not LEGACY_TRANSACTION_CONTROL:
            autocommit = _autocommit_mode(autocommit)
        if self._initialized:
            # sqlite3: __init__ on an open connection lets go of the old database (closed
            # once its last cursor is gone: a cursor still reads its rows) and, if the new
            # open fails, leaves the object uninitialised. An audited one closes now.
            if self._audit is not None:
                self.close()
            self._initialized = False
        self._apsw: Any = None
        self._closed = True
        self._audit: Any = None
        # see Cursor._prepare_params; None again once the statement that bound it ran, so
        # that the paths binding tuples need not reset it
        self._binding_source: Optional[list] = None
        self._binding_len = 0
        # APSW cursors that run statements yielding no rows (Cursor.execute), taken with
        # pop() and given back with append(): each user of one has it to itself. Never
        # give one an exec tracer (see _implicit_begin).
        self._spare: list = []
        self._probes: list = []  # the same for _implicit_begin's compile checks
        # SQL texts Connection.execute runs on its shortest path: DML without RETURNING,
        # named parameters or anything after it, seen once on this (unaudited) connection
        # while no adapter for a type SQLite binds natively was registered. Empty while the
        # connection is closed: a text found here means an open connection.
        self._plain_dml: dict = {}
        self._slot: Any = None  # Connection.execute's own spare cursor
        # Python 3.10: every cursor, so that rollback() can reset them (_reset_by_rollback).
        self._cursors: Optional[weakref.WeakSet] = (
            weakref.WeakSet() if _versions.ROLLBACK_RESETS_CURSORS else None)
        self._thread_id = threading.get_ident()
        self._check_same_thread = bool(check_same_thread)
        # Threads may share it: their calls are serialized (heliosdb.shared_connection),
        # the audit session's included, under this one lock.
        self._serial = None if self._check_same_thread else (
            self._serial or threading.RLock())
        if type(database) is not str:
            database = _fspath(database)
        if not isinstance(timeout, (int, float)):
            raise _versions.timeout_type_error(timeout)
        if uri:
            database = _shared_memory_uri(database)
        mods = _OPEN_MODULES or _open_modules()
        self._config = mods.config.load_config(config)  # it owns presets and validation
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        if uri:
            flags |= apsw.SQLITE_OPEN_URI
        open_connection = mods.crypto.open_connection
        coerce_key = mods.keys.coerce_key

        if key is not None:
            try:
                key = coerce_key(key, getattr(self._config.encryption, "kdf_profile", None))
            except (TypeError, ValueError) as exc:
                # Misuse of the interface, as a heliosdb error; the message never holds
                # the key itself.
                raise ProgrammingError(f"invalid key: {exc}") from None
        try:
            self._apsw = open_connection(
                database, flags=flags, uri=bool(uri), key=key,
                encryption=self._config.encryption,
                statementcachesize=max(0, int(cached_statements)),
            )
        except apsw.Error as exc:
            raise translate(exc) from exc
        except (TypeError, ValueError) as exc:
            # Misuse (a closed Key, a bad key source...): a heliosdb error, not a bare one.
            raise ProgrammingError(str(exc)) from None
        self._closed = False
        _open_connections.add(self)
        self._database = database
        try:
            self._autocommit = autocommit
            self._finish_open(timeout, detect_types, isolation_level, cached_statements,
                              audit_user, audit_context)
            if autocommit is False:
                self._begin_explicit()  # autocommit=False: a transaction is always open
        except BaseException:
            # Never leave a half-open connection behind: it would keep the file, and an
            # encrypted file's key, registered until a garbage collection.
            self._closed = True
            self._plain_dml.clear()
            try:
                self._apsw.close(True)
            except apsw.Error:
                pass  # the original error is what matters
            raise
        self._initialized = True
        if self._serial is not None:
            share_connection(self)

    def _finish_open(self, timeout: float, detect_types: int, isolation_level: Any,
                     cached_statements: int, audit_user: Optional[str],
                     audit_context: Optional[Mapping[str, Any]]) -> None:
        try:
            self._apsw.set_busy_timeout(int(float(timeout) * 1000))
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc
        self._detect_types = int(detect_types)
        self._begin_sql: Optional[str] = None
        self._isolation_level: Optional[str] = None
        self._set_isolation_level(isolation_level, commit=False)
        # What statements.classify says is a function of the SQL text alone: connections
        # of the default size share one cache, so that a new connection finds the texts
        # that earlier ones classified (a connection opened per request, W7).
        size = int(cached_statements)
        if size == 128:
            self._stmt_cache, self._stmt_flags = _SHARED_STMT_CACHE, _SHARED_STMT_FLAGS
        else:
            self._stmt_cache = _StatementCache(size)
            self._stmt_flags = self._stmt_cache.data
        self.row_factory: Optional[Callable[[Cursor, tuple], Any]] = None
        self.text_factory: Callable[[bytes], Any] = str
        self._trace: Optional[Callable[..., bool]] = None
        self._user_authorizer: Optional[Callable[..., int]] = None
        self._internal_authorizer: Optional[Callable[..., int]] = None
        # APSW asks this for values it cannot bind natively: that is where registered
        # adapters (date, datetime, user types) and __conform__ apply.
        self._apsw.convert_binding = self._convert_binding
        if (_OPEN_MODULES or _open_modules()).crypto.is_encrypted(self._apsw):
            self._apply_authorizer()
        else:
            self._apsw.authorizer = None  # what _apply_authorizer does with none to chain
        self._apply_database_config()
        # Whatever config= says, a database whose file holds an audit policy runs under at
        # least that policy (heliosdb.audit.policy).
        self._audit, self._config = (_OPEN_MODULES or _open_modules()).capture.attach_audit(
            self, self._config, user=audit_user, context=audit_context, lock=self._serial)

    # -- open-time set-up --
    def _apply_database_config(self) -> None:
        for name, value in self._config.database.pragmas():
            try:
                self._apsw.pragma(name, value)
            except apsw.Error as exc:
                raise _translate(self._apsw, exc) from exc

    def _convert_binding(self, cursor: Any, num: int, value: Any) -> Any:
        adapter = adapters.get((type(value), PrepareProtocol))
        if adapter is None:
            adapter = _stdlib_adapter(value)
        if adapter is not None:
            out = adapter(value)
        else:
            conform = getattr(value, "__conform__", None)
            try:
                out = conform(PrepareProtocol) if conform is not None else None
            except TypeError:
                out = None  # sqlite3: a TypeError in __conform__ means "cannot adapt"

            if out is None:
                raise _versions.binding_error(num, value, cursor.bindings_names)
        src = self._binding_source
        if src is not None and num < self._binding_len and len(src) < self._binding_len:
            # sqlite3 reads each parameter from the list as it binds: one that an adapter
            # shortened fails with IndexError at the first item it lacks (after the last
            # item, or if it grew, nothing is read from it again).
            raise IndexError("list index out of range")
        if isinstance(out, (bytearray, memoryview)):
            return bytes(out)
        if out is not None and not isinstance(out, (int, float, str, bytes)):
            raise _versions.binding_error(num, value, cursor.bindings_names)
        return out

    def _adapt_value(self, value: Any) -> Any:
        adapter = adapters.get((type(value), PrepareProtocol))
        if adapter is not None:
            return adapter(value)
        return value

    # -- state checks --
    def _check_thread(self) -> None:
        if self._check_same_thread and threading.get_ident() != self._thread_id:
            raise ProgrammingError(
                "SQLite objects created in a thread can only be used in that same thread. "
                f"The object was created in thread id {self._thread_id} and this is "
                f"thread id {threading.get_ident()}.")

    def _check(self) -> None:
        if self._check_same_thread and threading.get_ident() != self._thread_id:
            self._check_thread()
        if self._closed:
            self._raise_closed()

    def _raise_closed(self) -> None:
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")
        raise ProgrammingError("Cannot operate on a closed database.")

    # -- transactions --
    def _check_open(self) -> None:
        # Attributes sqlite3 lets any thread read: only a closed connection is refused.
        if self._closed:
            self._raise_closed()

    @property
    def isolation_level(self) -> Optional[str]:
        """'' (DEFERRED), 'DEFERRED', 'IMMEDIATE', 'EXCLUSIVE', or None for autocommit."""
        self._check_open()
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Optional[str]) -> None:
        self._check()
        self._set_isolation_level(value, commit=True)

    def _set_isolation_level(self, value: Optional[str], *, commit: bool) -> None:
        if value is None:
            if commit:
                self.commit()
            self._isolation_level = None
            self._begin_sql = None
            return
        if not isinstance(value, str):
            raise _versions.isolation_level_type_error(value)
        level = str.upper(value)  # not a subclass's upper() (CPython issue 27881)
        if level not in _VALID_ISOLATION_LEVELS:
            raise _versions.isolation_level_value_error()
        self._isolation_level = _versions.isolation_level_shown(value, level)
        # Implicit BEGIN only under the legacy transaction control (3.12's autocommit).
        legacy = self._autocommit is not True and self._autocommit is not False
        self._begin_sql = "BEGIN " + level if legacy else None

    def _implicit_begin(self, sql: str, cur: Any = None) -> None:
        """The implicit BEGIN before the DML statement ``sql``, in sqlite3's order: once
        the statement compiled (one that does not, a syntax error or a missing table,
        raises its error here and opens no transaction) and before its parameters are
        bound (a binding error leaves the transaction open, as in sqlite3).

        Issued between statements, never from inside an exec tracer: APSW 3.54.0 (the
        newest for Python 3.10) leaks a reference to the running cursor when a tracer runs
        SQL, which kept a connection dropped without close() from ever being collected.
        (That is one case of its bug: there, every cursor made leaks a reference to each
        cursor of the connection still alive. So on 3.10 ``cur``, the statement's own
        cursor, runs the check and the BEGIN, and no other cursor is made meanwhile.)"""
        if cur is not None:
            cur.exec_trace = _stop_trace
            try:
                cur.execute(sql, None, can_cache=True)
            except (apsw.ExecTraceAbort, apsw.BindingsError):
                pass
            finally:
                cur.exec_trace = self._trace  # (None would hide the connection's tracer)
            self._begin(cursor=cur)
            return
        probes = self._probes
        try:
            probe = probes.pop()
        except IndexError:
            # Its own cursors: APSW (3.54) has no way back to "no tracer of its own" for a
            # cursor once one was set (None then hides the connection's tracer too).
            probe = self._apsw.cursor()
            probe.exec_trace = _stop_trace
        try:
            # Compiled (from APSW's statement cache, where the statement then waits for
            # its run) and stopped before it steps: by the tracer, or before binding when
            # it has parameters.
            probe.execute(sql, None, can_cache=True)
        except (apsw.ExecTraceAbort, apsw.BindingsError):
            pass
        finally:
            probes.append(probe)
        self._begin()

    def _begin(self, sql: Optional[str] = None, *, cursor: Any = None) -> None:
        """BEGIN (the isolation level's, or ``sql``), telling the audit session; run on
        ``cursor`` if given, else on a spare cursor (see _implicit_begin for 3.10)."""
        spare = None
        cur = cursor
        if cur is None:
            if _SPARE_CURSORS:
                spare = self._spare
                try:
                    cur = spare.pop()
                except IndexError:
                    cur = self._apsw.cursor()
            else:
                # 3.10: the cursor of the audited statement this BEGIN is for, if any
                cur = self._begin_cursor or self._apsw
        try:
            cur.execute(sql or self._begin_sql)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc
        finally:
            if spare is not None:
                spare.append(cur)
        if self._audit is not None:
            self._audit.on_begin()

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (SQLite is not in autocommit mode)."""
        self._check_open()
        return not self._apsw.get_autocommit()

    @property
    def total_changes(self) -> int:
        """Rows changed by INSERT/UPDATE/DELETE since the connection opened (heliosdb's
        own audit writes not included)."""
        self._check_open()
        n = self._apsw.total_changes()
        return n - self._audit.own_changes if self._audit is not None else n

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        self._check()
        mode = self._autocommit
        if mode is True:
            return  # 3.12 autocommit=True: sqlite3's commit() does nothing
        if self._audit is not None:
            self._audit.commit()  # checks for an open transaction under its lock
        elif not self._apsw.get_autocommit():
            try:
                self._apsw.execute("COMMIT")
            except apsw.Error as exc:
                raise _translate(self._apsw, exc) from exc
        if mode is False:
            self._begin_explicit()  # autocommit=False: the next transaction opens now

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        self._check()
        mode = self._autocommit
        if mode is True:
            return  # 3.12 autocommit=True: sqlite3's rollback() does nothing
        if self._cursors is not None and not self._apsw.get_autocommit():
            for cur in list(self._cursors):
                cur._reset_by_rollback()
        if self._audit is not None:
            self._audit.rollback()  # checks for an open transaction under its lock
        elif not self._apsw.get_autocommit():
            try:
                self._apsw.execute("ROLLBACK")
            except apsw.Error as exc:
                raise _translate(self._apsw, exc) from exc
        if mode is False:
            self._begin_explicit()  # autocommit=False: the next transaction opens now

    def _begin_explicit(self) -> None:
        """BEGIN, as 3.12's autocommit=False issues it (not an implicit one)."""
        if not self._apsw.get_autocommit():
            return
        try:
            self._apsw.execute("BEGIN")
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc
        if self._audit is not None:
            self._audit.on_begin()

    def _get_autocommit(self) -> Any:
        """True, False or LEGACY_TRANSACTION_CONTROL (Python 3.12+)."""
        self._check()
        return self._autocommit

    def _set_autocommit(self, value: Any) -> None:
        self._check()
        mode = _autocommit_mode(value)
        self._autocommit = mode
        self._set_isolation_level(self._isolation_level, commit=False)
        if mode is True and not self._apsw.get_autocommit():
            if self._audit is not None:
                self._audit.commit()
            else:
                try:
                    self._apsw.execute("COMMIT")
                except apsw.Error as exc:
                    raise _translate(self._apsw, exc) from exc
        elif mode is False:
            self._begin_explicit()

    # -- connection configuration (3.12+) --
    def _dbconfig_op(self, op: Any) -> int:
        op = operator.index(op)
        if op not in _DBCONFIG_OPS:
            raise ValueError(f"unknown config 'op': {op}")
        return op

    def _getconfig(self, op: int, /) -> bool:
        """Query a boolean connection configuration option (SQLITE_DBCONFIG_*)."""
        self._check()
        op = self._dbconfig_op(op)
        try:
            return bool(self._apsw.config(op, -1))
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    def _setconfig(self, op: int, enable: bool = True, /) -> None:
        """Set a boolean connection configuration option (SQLITE_DBCONFIG_*). On an
        audited connection, a setting that would weaken the log is refused."""
        self._check()
        op = self._dbconfig_op(op)
        enable = bool(enable)
        if (self._audit is not None or self._internal_authorizer is not None) \
                and op in _DBCONFIG_WEAKENS and enable is _DBCONFIG_WEAKENS[op] \
                and bool(self._apsw.config(op, -1)) is not enable:
            name = next(n for n, v in DBCONFIG_CONSTANTS.items() if v == op)
            raise errors.AuditPolicyError(
                f"setconfig({name}, {enable}) is refused on an audited database: it "
                "would let the audit log be rewritten or bypassed")
        try:
            self._apsw.config(op, int(enable))
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    # -- loadable extensions --
    def enable_load_extension(self, enable: bool, /) -> None:
        """Allow or forbid loading SQLite extensions; enabling is refused on an audited
        database, where an extension could write around the audit log."""
        self._check()
        if enable and (self._audit is not None or self._internal_authorizer is not None):
            raise errors.AuditPolicyError(
                "enable_load_extension(True) is refused on an audited database: an "
                "extension's code could change the database and its log unrecorded")
        try:
            self._apsw.enable_load_extension(bool(enable))
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    def load_extension(self, name: str, /, *, entrypoint: Optional[str] = None) -> None:
        """Load a SQLite extension (after ``enable_load_extension(True)``); refused on an
        audited database."""
        self._check()
        if self._audit is not None or self._internal_authorizer is not None:
            raise errors.AuditPolicyError(
                "load_extension() is refused on an audited database: an extension's code "
                "could change the database and its log unrecorded")
        try:
            if entrypoint is None:
                self._apsw.load_extension(name)
            else:
                self._apsw.load_extension(name, entrypoint)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc


    def __call__(self, *args: Any) -> "Statement":  # shown as (sql, /): see below
        """Compile ``sql`` (as sqlite3's undocumented ``con(sql)`` does) and return the
        prepared statement; errors are those ``execute`` would raise."""
        self._check()
        if len(args) != 1:
            raise TypeError(f"Connection() takes exactly 1 argument ({len(args)} given)")
        sql = args[0]
        if not isinstance(sql, str):
            raise TypeError(f"argument must be str, not {type(sql).__name__}")
        _check_sql(self, sql)
        probe = self._apsw.cursor()

        def stop(_cursor: Any, _sql: str, _bindings: Any) -> bool:
            return False

        probe.exec_trace = stop
        try:
            _probing(self, lambda: probe.execute(sql, None, can_cache=True, prepare_flags=0))
        except apsw.ExecTraceAbort:
            pass
        except apsw.BindingsError:
            pass  # compiled; it has parameters, bound when it runs
        except BaseException as exc:  # noqa: BLE001
            _raise_sql_error(self, exc, sql)
        finally:
            probe.close(True)
        stmt = object.__new__(Statement)
        stmt._sql = sql
        return stmt

    # -- cursors and shortcuts --
    def cursor(self, factory: Callable[["Connection"], Cursor] = Cursor) -> Cursor:
        """A new cursor (``factory`` must build a heliosdb Cursor)."""
        self._check()
        cur = factory(self)
        if not issubclass(type(cur), Cursor):  # type(), not a __class__ that lies
            raise TypeError("factory must return a cursor, not " + type(cur).__name__)
        return cur

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Shortcut: a new cursor's ``execute``."""
        # Cursor.execute's paths for the two common kinds of statement, inlined here
        # (DESIGN.md 1: no second Python frame per statement), on a Cursor made without
        # its __init__ frame; a new cursor's class defaults are already most of the state
        # it leaves. First, plain DML (see _plain_dml) inside a transaction, or with none
        # to open: on a spare APSW cursor, as Cursor.execute runs it.
        db = self._apsw
        if sql in self._plain_dml:
            if type(parameters) is tuple and not (
                    self._check_same_thread and _get_ident() != self._thread_id) \
                    and (self._begin_sql is None or not db.get_autocommit()):
                cur = _new_cursor(Cursor)
                cur._connection = self
                if self.row_factory is not None:
                    cur.row_factory = self.row_factory
                # The spare cursor of this path: taken and put back as plain attribute reads
                # and writes, between which CPython never switches threads (a statement run
                # meanwhile, from inside this one or by another thread, finds None and makes
                # a cursor; APSW refuses a cursor used twice at once rather than misbehave).
                apsw_cur = self._slot
                self._slot = None
                if apsw_cur is None:
                    apsw_cur = db.cursor()
                try:
                    apsw_cur.execute(sql, parameters)
                except BaseException as exc:  # noqa: BLE001
                    self._slot = apsw_cur
                    cur._failed()
                    _raise_sql_error(self, exc, sql)
                self._slot = apsw_cur
                cur.rowcount = db.changes()
                cur.lastrowid = db.last_insert_rowid()
                return cur
            # The same with a list or a dict of parameters (after tuples, which pay nothing
            # for it: each bytecode there costs about 20 instructions). A list is bound as a
            # copy.
            elif ((tp := type(parameters)) is list or tp is dict) and not (
                    self._check_same_thread and _get_ident() != self._thread_id) \
                    and (self._begin_sql is None or not db.get_autocommit()):
                cur = _new_cursor(Cursor)
                cur._connection = self
                if self.row_factory is not None:
                    cur.row_factory = self.row_factory
                apsw_cur = self._slot
                self._slot = None
                if apsw_cur is None:
                    apsw_cur = db.cursor()
                try:
                    if tp is list:  # (a "bound copy": see the note before _type_name)
                        self._binding_source = parameters
                        self._binding_len = len(parameters)
                        apsw_cur.execute(sql, tuple(parameters))
                    else:
                        apsw_cur.execute(sql, parameters)
                except BaseException as exc:  # noqa: BLE001
                    self._slot = apsw_cur
                    cur._failed()
                    _raise_sql_error(self, exc, sql)
                self._slot = apsw_cur
                self._binding_source = None
                cur.rowcount = db.changes()
                cur.lastrowid = db.last_insert_rowid()
                return cur
        if self._closed or (self._check_same_thread and _get_ident() != self._thread_id):
            self._check()  # raises sqlite3's error (thread first, as its cursor() checks)
        cur = _new_cursor(Cursor)
        cur._connection = self
        if self._cursors is not None:
            self._cursors.add(cur)
        cur.row_factory = self.row_factory  # (set even if None: read faster once set)
        if self._stmt_flags.get(sql) != 0 or type(parameters) is not tuple \
                or _base_type_adapted or self._audit is not None:
            # not classified yet, DML, several statements, named parameters, audited...
            return cur.execute(sql, parameters)
        # One statement that is not DML (a query, DDL, PRAGMA...): on its own APSW cursor.
        cur._cur = apsw_cur = db.cursor()
        cur._sql = sql
        cur._params = parameters
        try:
            apsw_cur.execute(sql, parameters)
        except BaseException as exc:  # noqa: BLE001
            cur._failed()
            _raise_sql_error(self, exc, sql)
        cur._rows_kind = True
        cur._active = True
        cur._desc_known = False
        cur._peek = None  # (class defaults, set: fetchone reads them faster)
        cur._count_at_end = False
        cur.lastrowid = db.last_insert_rowid()
        return cur

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        """Shortcut: a new cursor's ``executemany``."""
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Cursor:
        """Shortcut: a new cursor's ``executescript``."""
        return self.cursor().executescript(sql_script)

    # -- user functions --
    def _refuse_reserved_function(self, name: Any, what: str) -> None:
        """On an audited connection, a function heliosdb's own SQL calls may not be
        replaced (see _RESERVED_FUNCTIONS): verify() would compute with the user's code."""
        if (self._audit is not None or self._internal_authorizer is not None) \
                and _reserved_function(name):
            raise errors.AuditPolicyError(
                f"{what}({name!r}) is refused on an audited database: heliosdb's own SQL "
                "(the audit log's verification) calls that function")

    def create_function(self, name: str, narg: int, func: Optional[Callable[..., Any]], *,
                        deterministic: bool = False) -> None:
        """Register (or, with ``func=None``, remove) a SQL function."""
        self._check()
        self._refuse_reserved_function(name, "create_function")
        if not isinstance(narg, int) or narg < -1 or narg > 127:
            raise OperationalError("Error creating function")
        try:
            if func is None:
                # As sqlite3 3.11 does: the name stays registered and fails when called.
                def missing(*args: Any) -> Any:
                    raise _CallbackFailed("user-defined function raised exception")

                self._apsw.create_scalar_function(name, missing, narg)
            else:
                self._apsw.create_scalar_function(name, _wrap_function(func), narg,
                                                  deterministic=deterministic)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Optional[Any]) -> None:
        """Register (or remove) an aggregate: a class with ``step`` and ``finalize``."""
        self._check()
        self._refuse_reserved_function(name, "create_aggregate")
        if not isinstance(n_arg, int) or n_arg < -1 or n_arg > 127:
            raise OperationalError("Error creating aggregate")
        try:
            if aggregate_class is None:
                def missing() -> Any:
                    raise _CallbackFailed(
                        "user-defined aggregate's '__init__' method raised error")

                self._apsw.create_aggregate_function(name, _wrap_aggregate(missing), n_arg)
            else:
                self._apsw.create_aggregate_function(name, _wrap_aggregate(aggregate_class),
                                                     n_arg)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    def create_collation(self, name: str, callable: Optional[Callable[[str, str], int]], /) -> None:  # noqa: A002
        """Register (or, with None, remove) a collation."""
        self._check()
        name = _versions.collation_name(name)
        if callable is not None and not hasattr(callable, "__call__"):
            raise TypeError("parameter must be callable")
        try:
            if callable is None:
                self._apsw.create_collation(name, None)
            else:
                def collate(a: str, b: str, _f: Callable[[str, str], int] = callable) -> int:
                    r = _f(a, b)
                    return (r > 0) - (r < 0) if isinstance(r, int) else 0

                self._apsw.create_collation(name, collate)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    # -- authorizer, progress, trace --
    def set_authorizer(self, authorizer_callback: Optional[Callable[..., int]]) -> None:
        """Install a user authorizer. It runs *after* heliosdb's own (audit) authorizer,
        which it can never replace or bypass."""
        self._check()
        self._user_authorizer = authorizer_callback
        self._apply_authorizer()

    def _set_internal_authorizer(self, callback: Optional[Callable[..., int]]) -> None:
        self._internal_authorizer = callback
        self._apply_authorizer()

    def _apply_authorizer(self) -> None:
        internal, user = self._internal_authorizer, self._user_authorizer
        encrypted = (_OPEN_MODULES or _open_modules()).crypto.is_encrypted(self._apsw)
        if internal is None and user is None and not encrypted:
            self._apsw.authorizer = None
            return
        if encrypted:
            from .crypto.rekey import attach_escape_reason
        else:
            attach_escape_reason = None

        def authorize(action: int, a1: Any, a2: Any, db: Any, trig: Any) -> int:
            result = apsw.SQLITE_OK
            if attach_escape_reason is not None and action == apsw.SQLITE_ATTACH \
                    and attach_escape_reason(a1):
                # ATTACH / VACUUM INTO naming another VFS in a URI would read or write a
                # file around the encryption: a plaintext copy of an encrypted database.
                return apsw.SQLITE_DENY
            audit = self._audit
            if audit is not None and audit.trusted_now():
                # heliosdb's own audit writes: the user's authorizer governs user SQL only.
                return result
            if internal is not None:
                result = internal(action, a1, a2, db, trig)
                if result != apsw.SQLITE_OK:
                    return result
            if user is not None:
                try:
                    r = user(action, a1, a2, db, trig)
                except Exception as exc:  # noqa: BLE001 - sqlite3 denies when it raises
                    _unraisable(user, exc)
                    return apsw.SQLITE_DENY
                if not isinstance(r, int):
                    return apsw.SQLITE_DENY  # sqlite3: a non-integer result denies
                if r not in (0, 1, 2):
                    if not -(1 << 31) <= r < (1 << 31):
                        # sqlite3 cannot convert it to a C int: reported, and denied.
                        _unraisable(user, OverflowError(
                            "Python int too large to convert to C int"))
                        return apsw.SQLITE_DENY
                    # SQLite itself reports "authorizer malfunction" for such a value.
                    return 99
                result = r
            return result

        self._apsw.authorizer = authorize

    def set_progress_handler(self, progress_handler: Optional[Callable[[], Any]], n: int) -> None:
        """Call ``progress_handler`` every ``n`` VM steps; a true result aborts."""
        self._check()
        if progress_handler is None:
            self._apsw.set_progress_handler(None)
            return

        def handler() -> bool:
            if self._audit is not None and self._audit.trusted_now():
                # heliosdb's own audit write (and the rollback after a failed one) runs to
                # its end: interrupting it would leave a change without its event.
                return False
            try:
                return bool(progress_handler())
            except Exception as exc:  # noqa: BLE001 - an exception aborts, as in sqlite3
                _unraisable(progress_handler, exc)
                return True

        self._apsw.set_progress_handler(handler, n)

    def set_trace_callback(self, trace_callback: Optional[Callable[[str], Any]]) -> None:
        """Call ``trace_callback`` with the SQL text of each statement run, parameters
        expanded, as sqlite3 does. heliosdb's own audit statements are not shown."""
        self._check()
        if trace_callback is None:
            self._trace = None
            self._apsw.exec_trace = None
            self._apsw.trace_v2(0, None)
            return
        last: list = [None]  # the last top-level statement (sqlite3 repeats it for triggers)

        def emit(sql: str) -> None:
            if self._audit is not None and self._audit.trusted_now():
                return
            try:
                trace_callback(sql)
            except Exception as exc:  # noqa: BLE001 - sqlite3 reports it and goes on
                _unraisable(trace_callback, exc)

        def on_exec(cursor: Any, sql: str, bindings: Any) -> bool:
            try:
                text = cursor.expanded_sql
            except apsw.Error:
                text = None
            if text is None:
                # Longer than SQLITE_LIMIT_LENGTH once expanded: the unexpanded text, as
                # sqlite3 falls back to, with the error it reports.
                if bindings:
                    _unraisable(trace_callback, errors.DataError(
                        "Expanded SQL string exceeds the maximum string length"))
                text = sql
            last[0] = text
            emit(text)
            return True

        def on_trigger(event: dict) -> None:
            # Only statements run by triggers: sqlite3 reports the top-level statement for
            # each. (APSW also flags a top-level statement that starts with a '--'
            # comment as a trigger, with the '-- ' cut off: that one was already reported.)
            if event.get("trigger") and last[0] is not None \
                    and not last[0].endswith(event.get("sql") or "\0"):
                emit(last[0])

        self._trace = on_exec
        self._apsw.exec_trace = on_exec
        self._apsw.trace_v2(apsw.SQLITE_TRACE_STMT, on_trigger)

    # -- misc API --
    def interrupt(self) -> None:
        """Abort any running statement (callable from another thread)."""
        if self._closed:
            self._raise_closed()
        self._apsw.interrupt()

    def iterdump(self, *, filter: Optional[str] = None) -> Iterator[str]:  # noqa: A002
        """The database as SQL text, one statement per item (like ``sqlite3.iterdump``);
        ``filter`` (Python 3.13+) keeps the objects whose name is LIKE it."""
        self._check()
        if filter is not None:
            if sys.version_info < (3, 13):
                raise TypeError("iterdump() got an unexpected keyword argument 'filter'")
        from .dump import iterdump

        return iterdump(self, filter)

    def backup(self, target: "Connection", *, pages: int = -1,
               progress: Optional[Callable[[int, int, int], Any]] = None,
               name: str = "main", sleep: float = 0.250, restore: bool = False) -> None:
        """Copy this database into ``target`` (another heliosdb Connection).

        A target whose database is audited is refused: a backup replaces its data and its
        log with no event. ``restore=True`` makes it an explicit restore: it runs, and a
        RESTORE event naming the previous head of the target's chain is appended to the
        resulting log. A backup *from* an audited database is a read of all of it: a
        SELECT event when reads are logged.
        """
        self._check()
        if not isinstance(target, Connection):
            raise TypeError("target must be a heliosdb.Connection")
        target._check()
        if target is self:
            raise ValueError("target cannot be the same connection instance")
        protected = target._audit is not None or target._internal_authorizer is not None
        if protected and not restore:
            raise errors.AuditPolicyError(
                f"refusing to back up into the audited database {target._database!r}: it "
                "would replace its data and its audit log without an event; pass "
                "restore=True to restore it explicitly (recorded as a RESTORE event)")
        from .crypto import is_encrypted

        if is_encrypted(self._apsw) and not is_encrypted(target._apsw):
            # A plaintext copy of an encrypted database must be an explicit act.
            raise errors.EncryptionError(
                "refusing to back up an encrypted database into an unencrypted one: open "
                "the target with key=..., or make a plaintext copy explicitly with "
                "heliosdb.decrypt(encrypted_path, plain_path, key)")
        if progress is not None and not callable(progress):
            raise TypeError("progress argument must be a callable")
        if pages == 0:
            pages = -1
        if self._audit is not None:
            self._audit.record_read(name, f"backup({name!r}) to {target._database!r}")
        previous = target._audit.before_restore() if target._audit is not None else None
        try:
            with target._apsw.backup("main", self._apsw, name) as b:
                while not b.done:
                    b.step(pages)
                    if progress is not None:
                        progress(0 if not b.done else 101, b.remaining, b.page_count)
                    if not b.done and sleep:
                        time.sleep(sleep)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc
        finally:
            if previous is not None:
                target._audit.after_restore(previous, source=str(self._database))

    def blobopen(self, table: str, column: str, row: int, /, *, readonly: bool = False,
                 name: str = "main") -> Any:
        """Open an incremental-I/O handle on a BLOB (sqlite3 3.11+).

        On an audited connection every write is an UPDATE event of the transaction it
        runs in (opened here if none is; committed when the blob is closed), every read a
        SELECT event when reads are logged, and the audit tables cannot be opened for
        writing."""
        self._check()
        audit = self._audit
        owns_tx = False
        if not readonly and (audit is not None or self._internal_authorizer is not None):
            from .audit.neighbourhood import find_audit_tables
            from .audit.store import META_TABLE

            low = str(table).lower()
            if audit is not None:
                protected = audit.protects(low)
            else:  # capture switched off by the stored policy: the logs stay guarded
                protected = low in (t.lower() for t in find_audit_tables(self._apsw))
            if low.startswith("sqlite_") or low == META_TABLE.lower() or protected:
                raise errors.AuditPolicyError(
                    f"refusing to open {table}.{column} for writing: the audit tables and "
                    "the schema are written by heliosdb only")
            if audit is not None and self._apsw.get_autocommit():
                # the transaction an audited blob's writes and their events share
                self._begin(self._begin_sql or "BEGIN")
                owns_tx = True
        try:
            blob = Blob._open(self, self._apsw.blob_open(name, table, column, row, not readonly))
        except apsw.Error as exc:
            if owns_tx:
                self.rollback()
            raise _translate(self._apsw, exc) from exc
        if audit is not None:
            blob._audited = (audit, str(table), str(column), int(row), owns_tx)
        return blob

    def create_window_function(self, name: str, num_params: int,
                               aggregate_class: Optional[Any], /) -> None:
        """Register (or remove) a window function: a class with step, inverse, value and
        finalize (sqlite3 3.11+)."""
        self._check()
        self._refuse_reserved_function(name, "create_window_function")
        try:
            if aggregate_class is None:
                self._apsw.create_window_function(name, None, num_params)
                return

            self._apsw.create_window_function(
                name, _aggregate_factory(aggregate_class, window=True), num_params)
        except apsw.Error as exc:
            # sqlite3: ProgrammingError with SQLite's text for the result code.
            raise ProgrammingError(_errstr(exc)) from exc

    def deserialize(self, data: bytes, /, *, name: str = "main") -> None:
        """Replace a database with the serialized bytes ``data`` (sqlite3 3.11+).

        Refused on an audited database: it would replace the data and the log unrecorded
        (deserialize into a plain connection, then ``backup(..., restore=True)``)."""
        self._check()
        data = _contiguous_bytes(data)  # sqlite3's argument errors: TypeError, BufferError
        if self._audit is not None or self._internal_authorizer is not None:
            raise errors.AuditPolicyError(
                "deserialize() is refused on an audited database: it would replace its data "
                "and its audit log without an event; deserialize into another connection "
                "and restore from it with backup(target, restore=True)")
        try:
            self._apsw.deserialize(name, data)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc

    def setlimit(self, category: int, limit: int, /) -> int:
        """Set a SQLite run-time limit; returns the previous value."""
        self._check()
        old = self._apsw.limit(category)
        if old < 0:
            raise ProgrammingError("'category' is out of bounds")
        return self._apsw.limit(category, limit)

    def getlimit(self, category: int, /) -> int:
        """A SQLite run-time limit."""
        self._check()
        value = self._apsw.limit(category)
        if value < 0:
            raise ProgrammingError("'category' is out of bounds")
        return value

    def serialize(self, *, name: str = "main") -> bytes:
        """The database as bytes (decrypted: it is SQLite's own serialization). On an
        audited connection, a SELECT event when reads are logged."""
        self._check()
        if self._audit is not None:
            self._audit.record_read(name, f"serialize({name!r})")
        try:
            data = self._apsw.serialize(name)
        except apsw.Error as exc:
            raise _translate(self._apsw, exc) from exc
        if data is None:
            raise OperationalError(f"unable to serialize '{name}'")
        return data

    def storage_info(self) -> dict:
        """Storage facts: encryption, algorithm, KDF, page size, key slots, nonce count."""
        self._check()
        from .crypto import storage_info

        return storage_info(self._apsw)

    @property
    def audit(self) -> Any:
        """The audit API of this connection (``None`` when audit is off)."""
        return self._audit

    @property
    def config(self) -> Any:
        """The configuration this connection runs under."""
        return self._config

    def close(self) -> None:
        """Close the connection, rolling back any uncommitted transaction."""
        if not self._initialized:
            self._raise_closed()
        self._check_thread()
        if self._closed:
            return
        if self._audit is not None:
            self._audit.check_closable()  # before anything is closed or rolled back
        try:
            if self._audit is not None:
                self._audit.close()
            if not self._apsw.get_autocommit():
                try:
                    self._apsw.execute("ROLLBACK")
                except apsw.Error:
                    pass
        finally:
            self._closed = True
            self._plain_dml.clear()
            try:
                self._apsw.close(True)
            except apsw.Error as exc:
                raise _translate(self._apsw, exc) from exc

    def __enter__(self) -> "Connection":
        if _versions.ENTER_CHECKS_CONNECTION:
            self._check()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()
        return False

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and self._apsw is not None:
            if sys.version_info >= (3, 13):
                # (imported with the module: an import fails once Python is shutting down)
                _warnings.warn(f"unclosed database in {self!r}", ResourceWarning,
                               source=self)
            audit = getattr(self, "_audit", None)
            try:
                if audit is not None:
                    # Dropped without close(): roll back as close() would, so that denied
                    # and failed attempts kept for after the transaction reach the disk. If
                    # that fails, Python reports it ("Exception ignored in ... __del__"):
                    # events lost at teardown are never silent.
                    audit.close()
            finally:
                try:
                    self._apsw.close(True)
                except apsw.Error:
                    pass  # released by the garbage collector either way

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<heliosdb.Connection {state} database={getattr(self, '_database', '?')!r}>"


def _call_signature() -> Any:
    import inspect

    p = inspect.Parameter
    return inspect.Signature([p("self", p.POSITIONAL_ONLY), p("sql", p.POSITIONAL_ONLY)])


# sqlite3's signature: Connection(sql, /). (heliosdb checks for a closed connection before
# the argument count, as sqlite3 does, so the function itself takes *args.)
Connection.__call__.__signature__ = _call_signature()  # type: ignore[attr-defined]


def _keywords_deprecated(method: str, names: tuple) -> Callable[[Any], Any]:
    """Python 3.13: passing these parameters by keyword is deprecated (positional-only in
    3.15); sqlite3's warning, naming the caller's line."""

    if len(names) == 1:
        msg = (f"Passing keyword argument {names[0]!r} to _sqlite3.Connection.{method}() "
               f"is deprecated. Parameter {names[0]!r} will become positional-only in "
               "Python 3.15.")
    else:
        listed = ", ".join(repr(n) for n in names[:-1]) + f" and {names[-1]!r}"
        msg = (f"Passing keyword arguments {listed} to _sqlite3.Connection.{method}() is "
               f"deprecated. Parameters {listed} will become positional-only in Python 3.15.")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs and any(n in kwargs for n in names):
                import warnings

                warnings.warn(msg, DeprecationWarning, skip_file_prefixes=(_PACKAGE_DIR,))
            return fn(self, *args, **kwargs)
        return wrapper

    return decorate


if sys.version_info >= (3, 13):
    for _method, _names in (("create_function", ("name", "narg", "func")),
                            ("create_aggregate", ("name", "n_arg", "aggregate_class")),
                            ("set_authorizer", ("authorizer_callback",)),
                            ("set_progress_handler", ("progress_handler",)),
                            ("set_trace_callback", ("trace_callback",))):
        setattr(Connection, _method,
                _keywords_deprecated(_method, _names)(getattr(Connection, _method)))
    del _method, _names

if _HAS_AUTOCOMMIT:
    Connection.autocommit = property(  # type: ignore[attr-defined]
        Connection._get_autocommit, Connection._set_autocommit,
        doc="True, False or LEGACY_TRANSACTION_CONTROL: how transactions are opened.")
if _HAS_DBCONFIG:
    Connection.getconfig = Connection._getconfig  # type: ignore[attr-defined]
    Connection.setconfig = Connection._setconfig  # type: ignore[attr-defined]


class Statement:
    """A compiled statement, as returned by calling a connection (``sqlite3.Statement``);
    it cannot be created directly."""

    __slots__ = ("_sql",)

    def __new__(cls, *args: Any, **kwargs: Any) -> "Statement":
        raise TypeError(f"cannot create '{cls.__module__}.{cls.__qualname__}' instances")


def _check_sql(conn: "Connection", sql: str) -> None:
    """sqlite3's checks of SQL text before it is compiled (off the hot path: callers run
    them when SQLite refused the text, to raise what sqlite3 raises)."""
    if "\x00" in sql:
        raise _versions.null_character()
    size = len(sql.encode("utf-8"))  # lone surrogates: UnicodeEncodeError, as sqlite3
    if size > conn._apsw.limit(apsw.SQLITE_LIMIT_SQL_LENGTH):
        raise errors.DataError("query string is too large")


def _raise_sql_error(conn: "Connection", exc: BaseException, sql: Optional[str]) -> None:
    """Raise ``exc`` as sqlite3 would, after the SQL-text checks sqlite3 runs first."""
    if sql is not None and isinstance(exc, (apsw.Error, ValueError)):
        _check_sql(conn, sql)
    if type(exc) is BufferError:  # a non-contiguous buffer bound as a BLOB
        raise _versions.noncontiguous_buffer() from exc
    _raise_translated(exc, sql, conn._apsw)


class Blob:
    """Incremental I/O on one BLOB, as ``sqlite3.Blob``: file-like and indexable."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Blob":
        raise TypeError(f"cannot create '{cls.__module__}.{cls.__qualname__}' instances")

    @classmethod
    def _open(cls, connection: "Connection", blob: Any) -> "Blob":
        self = object.__new__(cls)
        self._init(connection, blob)
        return self

    def _init(self, connection: "Connection", blob: Any) -> None:
        self._connection = connection
        self._blob = blob
        self._closed = False
        #: (audit session, table, column, rowid, transaction opened for this blob) on an
        #: audited connection, else None.
        self._audited: Optional[tuple] = None

    def _read_raw(self, n: int) -> bytes:
        if self._audited is not None:
            audit, table, column, row, _ = self._audited
            audit.record_read(table, f"blob read: {table}.{column} rowid {row}")
        return self._call(self._blob.read, n)

    def _write_raw(self, data: bytes) -> None:
        if self._audited is not None:
            # require_reason: checked before writing (see before_blob_write)
            self._audited[0].before_blob_write(*self._audited[1:4])
        offset = self._blob.tell()
        self._call(self._blob.write, data)
        if self._audited is not None:
            audit, table, column, row, _ = self._audited
            audit.record_blob_write(table, column, row, offset, len(data))

    def _check(self) -> None:
        self._connection._check()
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed blob.")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except apsw.Error as exc:
            raise _translate(self._connection._apsw, exc) from exc

    def close(self) -> None:
        """Close the blob; further use raises ProgrammingError."""
        if not self._closed:
            self._closed = True
            try:
                self._blob.close()
            except apsw.Error:
                # APSW re-raises an earlier failed write at close; sqlite3 already
                # reported it when it happened.
                pass
            if self._audited is not None and self._audited[4]:
                # The transaction opened for this blob: its writes and their events
                # commit together now.
                conn = self._connection
                if not conn._closed and conn.in_transaction:
                    conn.commit()

    def __len__(self) -> int:
        self._check()
        return self._blob.length()

    def read(self, length: int = -1, /) -> bytes:
        """Read ``length`` bytes (all that is left by default) at the current offset."""
        self._check()
        left = self._blob.length() - self._blob.tell()
        n = left if length < 0 else min(length, left)
        return self._read_raw(n) if n > 0 else b""

    def write(self, data: Any, /) -> None:
        """Write ``data`` at the current offset; a BLOB cannot grow."""
        self._check()
        data = _contiguous_bytes(data)
        if self._blob.tell() + len(data) > self._blob.length():
            raise ValueError("data longer than blob length")
        self._write_raw(data)

    def tell(self) -> int:
        """The current offset."""
        self._check()
        return self._blob.tell()

    def seek(self, offset: int, origin: int = 0, /) -> None:
        """Move the offset (origin 0: start, 1: current, 2: end)."""
        self._check()
        offset = _c_int(offset)
        origin = _c_int(origin)
        base = {0: 0, 1: self._blob.tell(), 2: self._blob.length()}.get(origin)
        if base is None:
            raise ValueError("'origin' should be os.SEEK_SET, os.SEEK_CUR, or os.SEEK_END")
        pos = base + offset
        if pos > _INT_MAX:
            raise OverflowError("seek offset results in overflow")
        if pos < 0 or pos > self._blob.length():
            raise ValueError("offset out of blob range")
        self._call(self._blob.seek, pos)

    def _index(self, key: Any) -> int:
        """A position from an index, as sqlite3 reads one (``__index__``, bounds)."""
        if not hasattr(type(key), "__index__"):
            raise TypeError("Blob indices must be integers")
        i = operator.index(key)
        if not -_SSIZE_MAX - 1 <= i <= _SSIZE_MAX:
            raise IndexError(f"cannot fit '{type(key).__name__}' into an index-sized integer")
        n = self._blob.length()
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("Blob index out of range")
        return i

    def __getitem__(self, key: Any) -> Any:
        self._check()
        here = self._blob.tell()
        try:
            if isinstance(key, slice):
                start, stop, step = key.indices(self._blob.length())
                if stop <= start if step > 0 else stop >= start:
                    return b""
                lo, hi = (start, stop) if step > 0 else (stop + 1, start + 1)
                self._call(self._blob.seek, lo)
                data = self._read_raw(hi - lo)
                return data[::step] if step > 0 else data[::-1][::-step]
            i = self._index(key)
            self._call(self._blob.seek, i)
            return self._read_raw(1)[0]
        finally:
            self._blob.seek(here)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._check()
        here = self._blob.tell()
        try:
            if isinstance(key, slice):
                start, stop, step = key.indices(self._blob.length())
                data = _contiguous_bytes(value)
                idx = range(start, stop, step)
                if len(data) != len(idx):
                    raise IndexError("Blob slice assignment is wrong size")
                if not idx:
                    return
                if step == 1:
                    self._call(self._blob.seek, start)
                    self._write_raw(data)
                else:
                    lo, hi = min(idx), max(idx) + 1
                    current = bytearray(self[lo:hi])
                    for j, b in zip(idx, data):
                        current[j - lo] = b
                    self._call(self._blob.seek, lo)
                    self._write_raw(bytes(current))
                return
            i = self._index(key)
            try:
                byte = operator.index(value)
            except TypeError:
                raise TypeError(f"'{type(value).__name__}' object cannot be interpreted "
                                "as an integer") from None
            if not 0 <= byte <= 255:
                raise ValueError("byte must be in range(0, 256)")
            self._call(self._blob.seek, i)
            self._write_raw(bytes([byte]))
        finally:
            self._blob.seek(here)

    def __delitem__(self, key: Any) -> None:
        self._check()
        if isinstance(key, slice):
            raise TypeError("Blob doesn't support slice deletion")
        raise TypeError("Blob doesn't support item deletion")

    # A mapping of positions, as sqlite3.Blob: not a sequence (no iteration, no `in`).
    __iter__ = None  # type: ignore[assignment]

    def __enter__(self) -> "Blob":
        self._check()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._check()
        self.close()
        return False


_INT_MAX = (1 << 31) - 1
_SSIZE_MAX = (1 << 63) - 1


def _c_int(value: Any) -> int:
    value = operator.index(value)
    if not -_INT_MAX - 1 <= value <= _INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return value


def _contiguous_bytes(data: Any) -> bytes:
    """``data`` (a bytes-like object) as bytes; a non-contiguous buffer is refused with
    BufferError, as sqlite3 refuses it."""
    if type(data) is bytes:
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") \
            from None
    if not view.c_contiguous:
        raise BufferError("underlying buffer is not C-contiguous")
    return view.tobytes()


#: Module attributes sqlite3 deprecates on this Python: served with a DeprecationWarning.
DEPRECATED_MODULE_ATTRS: dict = {}


def module_getattr(name: str) -> Any:
    """heliosdb's (and heliosdb.dbapi2's) module ``__getattr__``: names sqlite3 still
    answers with a warning."""
    import warnings

    if name == "OptimizedUnicode" and sys.version_info < (3, 12):
        # Deprecated in 3.10, removed in 3.12, as in sqlite3.
        warnings.warn("OptimizedUnicode is deprecated. Instead, use 'str'.",
                      DeprecationWarning, stacklevel=2)
        return str
    if name in DEPRECATED_MODULE_ATTRS:
        warnings.warn(f"{name} is deprecated and will be removed in Python 3.14",
                      DeprecationWarning, stacklevel=2)
        return DEPRECATED_MODULE_ATTRS[name]
    raise AttributeError(f"module 'heliosdb' has no attribute '{name}'")


def _shared_memory_uri(uri: str) -> str:
    """Map sqlite3's shared-cache in-memory URIs onto SQLite's ``memdb`` VFS.

    APSW's SQLite is built without shared cache, so ``file:x?mode=memory&cache=shared``
    would give each connection its own empty database; ``memdb`` gives the sharing
    sqlite3 users rely on (several connections, one in-memory database). The URI is read
    by SQLite's own rules (:func:`heliosdb.crypto.uri.parse_filename`: percent-decoding,
    the last ``mode``/``cache`` wins, ``#`` ends it), so this agrees with what SQLite
    would have opened; a URI SQLite refuses is left for SQLite to refuse.
    """
    from urllib.parse import quote

    from .crypto import uri as sqlite_uri

    flags = sqlite_uri.OPEN_READWRITE | sqlite_uri.OPEN_CREATE | sqlite_uri.OPEN_URI
    try:
        target = sqlite_uri.parse_filename(uri, flags)
    except sqlite_uri.UriError:
        return uri
    if not target.is_uri or not target.flags & sqlite_uri.OPEN_MEMORY \
            or not target.flags & sqlite_uri.OPEN_SHAREDCACHE:
        return uri
    # The decoded path: the same parser on the part before the query.
    end = min((i for i in (uri.find("?"), uri.find("#")) if i >= 0), default=len(uri))
    path = sqlite_uri.parse_filename(uri[:end], flags).path or ""
    name = path.lstrip("/") or "memdb"
    rest = [(k, v) for k, v in target.params if k not in ("mode", "cache", "vfs")]
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                     for k, v in rest + [("vfs", "memdb")])
    return f"file:/{quote(name, safe='/')}?{query}"


def _fspath(database: Any) -> str:
    import os

    if isinstance(database, bytes):
        return os.fsdecode(database)
    if isinstance(database, (str, os.PathLike)):
        return os.fspath(database)
    raise TypeError("database must be str, bytes or os.PathLike")


def connect(database: Any, timeout: float = 5.0, detect_types: int = 0,
            isolation_level: Optional[str] = "", check_same_thread: bool = True,
            factory: type = Connection, cached_statements: int = 128, uri: bool = False,
            *, key: Any = None, config: Any = None, audit_user: Optional[str] = None,
            audit_context: Optional[Mapping[str, Any]] = None,
            autocommit: Any = LEGACY_TRANSACTION_CONTROL) -> Connection:
    """Open a connection, like ``sqlite3.connect``, optionally encrypted and audited.

    ``key`` opens (or creates) an encrypted database: a passphrase ``str``, 32 raw
    bytes, or a :class:`heliosdb.Key`. ``config`` is a preset name (``"hipaa"``), a
    TOML path, or a dict; it turns on auditing and sets encryption policy.
    """
    cls = Connection if factory is None else factory  # None: tolerated, as sqlite3 does
    # Pass heliosdb's own keywords only when used, so that a ``factory`` written for
    # sqlite3's signature keeps working.
    # (Written out, not a loop over tuples: this runs at every open, W7.)
    extra: dict = {}
    if key is not None:
        extra["key"] = key
    if config is not None:
        extra["config"] = config
    if audit_user is not None:
        extra["audit_user"] = audit_user
    if audit_context is not None:
        extra["audit_context"] = audit_context
    # As sqlite3 (gh-95132), the factory gets keyword arguments, not positional ones:
    # only those that differ from the defaults (in type or value), as a caller would
    # have given them.
    if type(timeout) is not float or timeout != 5.0:
        extra["timeout"] = timeout
    if type(detect_types) is not int or detect_types != 0:
        extra["detect_types"] = detect_types
    if type(isolation_level) is not str or isolation_level != "":
        extra["isolation_level"] = isolation_level
    if check_same_thread is not True:
        extra["check_same_thread"] = check_same_thread
    if type(cached_statements) is not int or cached_statements != 128:
        extra["cached_statements"] = cached_statements
    if uri is not False:
        extra["uri"] = uri
    if factory is not Connection:
        extra["factory"] = factory
    if autocommit is not LEGACY_TRANSACTION_CONTROL:
        if not _HAS_AUTOCOMMIT:
            raise TypeError("connect() got an unexpected keyword argument 'autocommit' "
                            "(Python 3.12+)")
        extra["autocommit"] = autocommit
    return cls(database, **extra)


if sys.version_info >= (3, 13):
    def _deprecate_positional_connect(fn: Callable[..., Connection]) -> Callable[..., Connection]:

        @functools.wraps(fn)
        def connect(database: Any, *args: Any, **kwargs: Any) -> Connection:
            if args:
                import warnings

                warnings.warn(
                    "Passing more than 1 positional argument to sqlite3.connect() is "
                    "deprecated. Parameters 'timeout', 'detect_types', 'isolation_level', "
                    "'check_same_thread', 'factory', 'cached_statements' and 'uri' will "
                    "become keyword-only parameters in Python 3.15.",
                    DeprecationWarning, skip_file_prefixes=(_PACKAGE_DIR,))
                # As sqlite3, the factory gets the arguments as they were given.
                factory = args[4] if len(args) > 4 else kwargs.get("factory", Connection)
                return (factory or Connection)(database, *args, **kwargs)
            return fn(database, **kwargs)

        return connect

    connect = _deprecate_positional_connect(connect)  # noqa: F811

    def _deprecate_positional_init(fn: Callable[..., None]) -> Callable[..., None]:

        @functools.wraps(fn)
        def __init__(self: Connection, database: Any, *args: Any, **kwargs: Any) -> None:
            if args:
                import warnings

                warnings.warn(
                    "Passing more than 1 positional argument to _sqlite3.Connection() is "
                    "deprecated. Parameters 'timeout', 'detect_types', 'isolation_level', "
                    "'check_same_thread', 'factory', 'cached_statements' and 'uri' will "
                    "become keyword-only parameters in Python 3.15.",
                    DeprecationWarning, skip_file_prefixes=(_PACKAGE_DIR,))
            fn(self, database, *args, **kwargs)

        return __init__

    Connection.__init__ = _deprecate_positional_init(Connection.__init__)  # type: ignore
