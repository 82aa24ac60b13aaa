"""HeliosDB: SQLite, made compliant.

A drop-in replacement for the stdlib ``sqlite3`` module (PEP 249) built on APSW, with
transparent AES-256-GCM page encryption and a tamper-evident audit log::

    import heliosdb
    conn = heliosdb.connect("app.db", key="correct horse battery staple", config="hipaa")

``import heliosdb as sqlite3`` works for ordinary code: the module globals, exception
tree, ``Row``, adapters and converters are those of ``sqlite3``.
"""
from __future__ import annotations

import datetime as _datetime
import sys as _sys
import time as _time

import apsw as _apsw

from . import dbapi as _dbapi_mod
from . import native as _native_mod
from . import stdlib_versions as _stdlib_versions
from .dbapi import (
    Blob,
    PARSE_COLNAMES,
    PARSE_DECLTYPES,
    Connection,
    Cursor,
    PrepareProtocol,
    Row,
    adapt,
    adapters,
    complete_statement,
    connect,
    converters,
    enable_callback_tracebacks,
    module_getattr as __getattr__,
    register_adapter,
    register_converter,
)
from .config import Config, load_config
from .crypto import Key
from .crypto.rekey import (
    add_key_slot,
    change_passphrase,
    decrypt,
    encrypt,
    list_key_slots,
    new_recovery_key,
    recovery_key,
    remove_key_slot,
    rotate_key,
    rotation_due,
)
from .crypto.verify import verify_encryption
from .audit.keyops import KeyEventRecorder as _KeyEventRecorder
from .crypto.rekey import set_key_event_recorder as _set_key_event_recorder
from .errors import (
    AuditIntegrityError,
    AuditPolicyError,
    ReasonRequiredError,
    ConfigError,
    ConfigWarning,
    CorruptHeaderError,
    CorruptPageError,
    DatabaseError,
    DataError,
    EncryptionError,
    EncryptionUnavailableError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    KeyRequiredError,
    NotEncryptedError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
    WrongKeyError,
)

from ._version import __version__  # noqa: E402

#: PEP 249 globals, with the values of the stdlib module.
apilevel = "2.0"


def _threadsafety() -> int:
    # As the stdlib does since 3.11: derived from how SQLite was compiled
    # (SQLITE_THREADSAFE 0 -> 0, 1 (serialized) -> 3, 2 (multi-thread) -> 1). 3.10's
    # sqlite3 says 1 whatever the library.
    if _stdlib_versions.PY310:
        return 1
    opts = [o for o in _apsw.compile_options if o.startswith("THREADSAFE=")]
    level = int(opts[0].split("=")[1]) if opts else 1
    return {0: 0, 1: 3, 2: 1}.get(level, 1)


threadsafety = _threadsafety()
paramstyle = "qmark"
#: The version of this package (``sqlite3.version`` is its module version, deprecated).
version = __version__
version_info = tuple(int(p) for p in __version__.split("."))
#: The SQLite library heliosdb runs on: APSW's own.
sqlite_version = _apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(p) for p in sqlite_version.split("."))

# PEP 249 type constructors.
Date = _datetime.date
Time = _datetime.time
Timestamp = _datetime.datetime
Binary = memoryview


def DateFromTicks(ticks: float) -> _datetime.date:
    """PEP 249: a date from seconds since the epoch (local time)."""
    return Date(*_time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> _datetime.time:
    """PEP 249: a time from seconds since the epoch (local time)."""
    return Time(*_time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> _datetime.datetime:
    """PEP 249: a timestamp from seconds since the epoch (local time)."""
    return Timestamp(*_time.localtime(ticks)[:6])


def enable_shared_cache(enable: bool, /) -> None:
    """Deprecated in sqlite3 (3.10, gone in 3.12), with its warning; APSW's SQLite is built
    without shared cache, so enabling it is refused rather than silently ignored."""
    if _sys.version_info < (3, 12):
        import warnings

        warnings.warn("enable_shared_cache is deprecated and will be removed in Python 3.12. "
                      "Shared cache is strongly discouraged by the SQLite 3 documentation. "
                      "If shared cache must be used, open the database in URI mode using"
                      "the cache=shared query parameter.", DeprecationWarning, stacklevel=2)
    if enable:
        raise NotSupportedError("shared cache is not available: use WAL mode, or the "
                                "'file:name?mode=memory&cache=shared' URI for in-memory "
                                "sharing")




def native_available() -> bool:
    """True when the C extension (VFS shim, chain hash) is built and in use."""
    return _native_mod.available()


# sqlite3 exposes the SQLite constants used with set_authorizer, setlimit, ...
for _name in dir(_apsw):
    if _name.startswith("SQLITE_") and isinstance(getattr(_apsw, _name), int):
        if _name.startswith(("SQLITE_OPEN_", "SQLITE_FCNTL_", "SQLITE_IOCAP_", "SQLITE_ACCESS_",
                             "SQLITE_LOCK_", "SQLITE_SHM_", "SQLITE_SYNC_", "SQLITE_CONFIG_",
                             "SQLITE_DBCONFIG_", "SQLITE_STATUS_", "SQLITE_DBSTATUS_",
                             "SQLITE_TXN_")):
            continue
        globals()[_name] = getattr(_apsw, _name)
del _name
if _sys.version_info >= (3, 12):
    # Python 3.12's transaction control and getconfig/setconfig verbs.
    from .dbapi import LEGACY_TRANSACTION_CONTROL  # noqa: E402,F401
    globals().update(_dbapi_mod.DBCONFIG_CONSTANTS)
    # sqlite3 3.12 deprecates version / version_info: served with a warning by __getattr__.
    _dbapi_mod.DEPRECATED_MODULE_ATTRS.update(version=version, version_info=version_info)
    del version, version_info


__all__ = [
    "apilevel", "threadsafety", "paramstyle", "version", "version_info", "sqlite_version",
    "sqlite_version_info", "connect", "Connection", "Cursor", "Row", "PrepareProtocol",
    "Binary", "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks",
    "TimestampFromTicks", "PARSE_DECLTYPES", "PARSE_COLNAMES", "register_adapter",
    "register_converter", "adapt", "adapters", "converters", "complete_statement",
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "ConfigError", "ConfigWarning", "EncryptionError", "WrongKeyError", "KeyRequiredError",
    "NotEncryptedError", "CorruptPageError", "CorruptHeaderError", "EncryptionUnavailableError",
    "AuditIntegrityError", "AuditPolicyError", "ReasonRequiredError", "native_available", "Key",
    "change_passphrase", "add_key_slot", "remove_key_slot", "list_key_slots", "rotate_key",
    "rotation_due", "encrypt", "decrypt", "verify_encryption", "new_recovery_key",
    "recovery_key", "Config", "load_config", "enable_callback_tracebacks", "enable_shared_cache", "Blob",
]
if _sys.version_info >= (3, 12):
    __all__ = [n for n in __all__ if n not in ("version", "version_info")]

from . import dbapi2  # noqa: E402,F401  - `from sqlite3 import dbapi2` style code


# The composition root: key operations (crypto) are recorded in audit logs by the audit
# package, which crypto does not import.
_set_key_event_recorder(_KeyEventRecorder())
