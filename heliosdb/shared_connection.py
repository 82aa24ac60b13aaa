"""A connection shared by threads (``check_same_thread=False``) runs one call at a time.

stdlib ``sqlite3`` lets threads share a connection without a lock of their own: SQLite's
connection mutex makes each call wait for the one another thread is running. APSW does
not wait: it refuses a call while another thread is inside the connection
(``ThreadingViolationError``, "Connection is busy in another thread", which could also
arrive after a statement had run), and some of its methods (``Connection.limit``) take
SQLite's mutex without releasing the GIL, which deadlocks against a thread that is
preparing a statement (it holds the mutex and waits for the GIL). Code that works on
sqlite3 failed or hung.

So the calls of a shared connection are serialized here, as sqlite3's are by SQLite: the
connection's class is swapped for a subclass (same name, no new slots) whose methods and
properties that reach SQLite hold the connection's lock, an ``RLock`` (a user function
called inside a statement may use the connection again on the same thread); the cursors
and blobs it hands out get the same treatment, and ``iterdump()`` takes the lock for each
line. The audit session of the connection uses the same lock (``attach_audit(lock=...)``),
so one lock orders everything. ``interrupt()`` takes none: it is meant to stop a call
running in another thread. Connections used by one thread pay nothing: their class is not
swapped.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Iterator

__all__ = ["SharedAudit", "share_connection", "share_cursor", "share_blob"]

#: Connection methods that reach SQLite (interrupt() is left out on purpose, see above).
CONNECTION_METHODS = (
    "commit", "rollback", "close", "cursor", "execute", "executemany", "executescript",
    "create_function", "create_aggregate", "create_collation", "create_window_function",
    "set_authorizer", "set_progress_handler", "set_trace_callback", "enable_load_extension",
    "load_extension", "__call__", "backup", "blobopen", "deserialize", "serialize",
    "setlimit", "getlimit", "getconfig", "setconfig", "__enter__", "__exit__")
CONNECTION_PROPERTIES = ("in_transaction", "total_changes", "isolation_level", "autocommit")
CURSOR_METHODS = ("execute", "executemany", "executescript", "fetchone", "fetchmany",
                  "fetchall", "__next__", "close")
CURSOR_PROPERTIES = ("description",)
BLOB_METHODS = ("close", "read", "write", "tell", "seek", "__len__", "__getitem__",
                "__setitem__", "__delitem__", "__enter__", "__exit__")

_made: "weakref.WeakKeyDictionary[type, type]" = weakref.WeakKeyDictionary()


def _connection_lock(conn: Any) -> Any:
    return conn._serial


def _owner_lock(obj: Any) -> Any:
    return obj._connection._serial


def _adopt(result: Any) -> Any:
    """A cursor or blob handed out by a shared connection is shared too (told apart by
    what they offer: this module imports nothing from the DB-API it serves)."""
    if hasattr(result, "fetchone"):
        share_cursor(result)
    elif hasattr(result, "seek"):
        share_blob(result)
    return result


def _locked(fn: Callable, lock_of: Callable[[Any], Any], adopt: bool) -> Callable:
    if adopt:
        @functools.wraps(fn)
        def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock_of(self):
                return _adopt(fn(self, *args, **kwargs))
    else:
        @functools.wraps(fn)
        def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock_of(self):
                return fn(self, *args, **kwargs)
    return locked


def _locked_property(prop: property, lock_of: Callable[[Any], Any]) -> property:
    fget = _locked(prop.fget, lock_of, False) if prop.fget is not None else None
    fset = _locked(prop.fset, lock_of, False) if prop.fset is not None else None
    fdel = _locked(prop.fdel, lock_of, False) if prop.fdel is not None else None
    return property(fget, fset, fdel, prop.__doc__)


def _iterdump(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def iterdump(self: Any, *args: Any, **kwargs: Any) -> Iterator[str]:
        lock = self._serial
        with lock:
            lines = fn(self, *args, **kwargs)
        while True:
            with lock:
                try:
                    line = next(lines)
                except StopIteration:
                    return
            yield line
    return iterdump


class SharedAudit:
    """``conn.audit`` of a connection threads share: every call of the audit API holds the
    connection's lock (its lazy query iteration takes it row by row, see
    ``heliosdb.audit.query``); attributes are the session's."""

    __slots__ = ("_session", "_lock")

    def __init__(self, session: Any, lock: Any) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_lock", lock)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._session, name)
        if not callable(value) or name.startswith("__"):
            return value
        lock = self._lock

        @functools.wraps(value)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return value(*args, **kwargs)
        return locked

    def __setattr__(self, name: str, value: Any) -> None:
        with self._lock:
            setattr(self._session, name, value)

    def __repr__(self) -> str:
        return repr(self._session)


def _audit(self: Any) -> Any:
    """The audit API of this connection (``None`` when audit is off); threads share the
    connection, so each call holds its lock."""
    session = self._audit
    if session is None:
        return None
    proxy = self.__dict__.get("_shared_audit")
    if proxy is None or proxy._session is not session:
        proxy = self.__dict__["_shared_audit"] = SharedAudit(session, self._serial)
    return proxy


def _shared_class(cls: type, methods: tuple, properties: tuple,
                  lock_of: Callable[[Any], Any], adopting: tuple = ()) -> type:
    made = _made.get(cls)
    if made is not None:
        return made
    ns: dict[str, Any] = {"__slots__": (), "__module__": cls.__module__,
                          "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                          "_shared_class": True}
    for name in methods:
        fn = getattr(cls, name, None)
        if callable(fn):
            ns[name] = _locked(fn, lock_of, name in adopting)
    for name in properties:
        prop = getattr(cls, name, None)
        if isinstance(prop, property):
            ns[name] = _locked_property(prop, lock_of)
    if callable(getattr(cls, "iterdump", None)):
        ns["iterdump"] = _iterdump(getattr(cls, "iterdump"))
    if isinstance(getattr(cls, "audit", None), property):
        ns["audit"] = property(_audit)
    made = type(cls.__name__, (cls,), ns)
    _made[cls] = made
    return made


def share_connection(conn: Any) -> None:
    """Serialize the calls of ``conn`` (whose ``_serial`` lock is set)."""
    cls = type(conn)
    if not getattr(cls, "_shared_class", False):
        conn.__class__ = _shared_class(
            cls, CONNECTION_METHODS, CONNECTION_PROPERTIES, _connection_lock,
            adopting=("cursor", "execute", "executemany", "executescript", "blobopen"))


def share_cursor(cur: Any) -> None:
    """Serialize the calls of a cursor of a shared connection."""
    cls = type(cur)
    if not getattr(cls, "_shared_class", False):
        cur.__class__ = _shared_class(cls, CURSOR_METHODS, CURSOR_PROPERTIES, _owner_lock)


def share_blob(blob: Any) -> None:
    """Serialize the calls of a blob of a shared connection."""
    cls = type(blob)
    if not getattr(cls, "_shared_class", False):
        blob.__class__ = _shared_class(cls, BLOB_METHODS, (), _owner_lock)
