"""The PEP 249 exception tree, and the mapping from SQLite result codes to it.

The classes and the mapping are those of the stdlib ``sqlite3`` module (CPython
``Modules/_sqlite/util.c``), so that ``except sqlite3.IntegrityError`` style code keeps
working when ``import heliosdb as sqlite3``. Every exception raised by SQLite carries
``sqlite_errorcode`` (the extended result code) and ``sqlite_errorname`` (its name, e.g.
``"SQLITE_CONSTRAINT_UNIQUE"``), as the stdlib's do since Python 3.11.

No ``apsw`` exception leaves the package: :func:`translate` turns each into one of these.
"""
from __future__ import annotations

from typing import Optional

import apsw

__all__ = [
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "ConfigError", "ConfigWarning", "EncryptionError", "WrongKeyError", "KeySlotError",
    "KeyRequiredError",
    "NotEncryptedError", "CorruptPageError", "CorruptHeaderError", "EncryptionUnavailableError",
    "AuditPolicyError", "ReasonRequiredError",
    "AuditIntegrityError", "translate",
]


class Warning(Exception):  # noqa: A001 - PEP 249 name
    """PEP 249 ``Warning``."""


class Error(Exception):
    """Base class of every error heliosdb raises (PEP 249 ``Error``)."""

    sqlite_errorcode: Optional[int] = None
    sqlite_errorname: Optional[str] = None


class InterfaceError(Error):
    """Misuse of the interface rather than a database problem (PEP 249)."""


class DatabaseError(Error):
    """An error reported by, or about, the database (PEP 249)."""


class DataError(DatabaseError):
    """A value was out of range or too big (``SQLITE_TOOBIG``)."""


class OperationalError(DatabaseError):
    """The database could not do what was asked: SQL error, busy, I/O, disk full..."""


class IntegrityError(DatabaseError):
    """A constraint failed."""


class InternalError(DatabaseError):
    """SQLite reported an internal error."""


class ProgrammingError(DatabaseError):
    """The program used the API wrongly: closed objects, wrong bindings..."""


class NotSupportedError(DatabaseError):
    """The feature is not supported."""


# --- heliosdb's own errors -----------------------------------------------------------------


class ConfigError(Error, ValueError):
    """A configuration is invalid. The message names the key, and the file and line."""

    def __init__(self, message: str, *, key: Optional[str] = None,
                 file: Optional[str] = None, line: Optional[int] = None) -> None:
        super().__init__(message)
        self.key = key
        self.file = file
        self.line = line


class ConfigWarning(UserWarning):
    """A configuration loaded, but parts of it have no effect on HeliosDB.

    Issued once per load, naming everything concerned: sections HeliosDB does not own
    (``[monitoring]``, ``[gdpr]``...; kept for the application in ``Config.extra``) and keys
    accepted without effect. ``file`` is the config's display name, ``sections`` the
    ignored top-level section names and ``keys`` the dotted keys without effect.
    """

    def __init__(self, message: str, *, file: Optional[str] = None,
                 sections: tuple[str, ...] = (), keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.file = file
        self.sections = tuple(sections)
        self.keys = tuple(keys)


class EncryptionError(DatabaseError):
    """Base class of the errors about encrypted storage."""


class WrongKeyError(EncryptionError):
    """The key does not open this database (checked before any page is read)."""


class KeySlotError(WrongKeyError):
    """A key slot of an encrypted file's header did not open under the key tried.

    Deliberately opaque, as ``cryptography``'s Fernet ``InvalidToken``: AES-GCM cannot
    tell a wrong key from a damaged slot, so neither does this error. ``slot`` is the
    index of the slot. Callers that try several slots catch it and go on to the next.
    """

    def __init__(self, message: str, *, slot: Optional[int] = None) -> None:
        super().__init__(message)
        self.slot = slot


class KeyRequiredError(EncryptionError):
    """The database is encrypted and no key was given."""


class NotEncryptedError(EncryptionError):
    """A key was given for a plaintext database."""


class CorruptPageError(EncryptionError):
    """A page failed authentication: tampered with, corrupt, or from another file."""

    def __init__(self, message: str, *, file: Optional[str] = None,
                 page: Optional[int] = None) -> None:
        super().__init__(message)
        self.file = file
        self.page = page


class CorruptHeaderError(EncryptionError):
    """The HeliosDB header of an encrypted file is damaged: a field outside its documented
    bounds, or fields that fail their check. ``file`` and ``field`` name where."""

    def __init__(self, message: str, *, file: Optional[str] = None,
                 field: Optional[str] = None) -> None:
        super().__init__(message)
        self.file = file
        self.field = field


class AuditIntegrityError(DatabaseError):
    """The audit log failed verification (``VerifyReport.raise_for_fault``); ``report``
    holds the details: fault, first bad event id, message."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class AuditPolicyError(DatabaseError):
    """Refused: the operation would change an audited database, or its log, without an
    event (a backup over it, ``deserialize``, a blob write into the log, a relaxed
    policy...). The message says which explicit, audited call does it instead."""


class ReasonRequiredError(AuditPolicyError):
    """Refused: the audit policy requires a reason for every change (``require_reason``,
    21 CFR 11.10(e)) and none is in force: give one with
    ``conn.audit.set_context(reason=...)`` or ``conn.audit.acting_as(user, reason=...)``.
    The refused attempt is recorded."""


class EncryptionUnavailableError(EncryptionError):
    """The native extension that encrypts pages is not built on this machine."""


# --- SQLite result code -> class, as the stdlib maps them ---------------------------------

_PRIMARY_TO_CLASS: dict[int, type[Error]] = {}
for _name, _cls in {
    "SQLITE_INTERNAL": InternalError, "SQLITE_NOTFOUND": InternalError,
    "SQLITE_ERROR": OperationalError, "SQLITE_PERM": OperationalError,
    "SQLITE_ABORT": OperationalError, "SQLITE_BUSY": OperationalError,
    "SQLITE_LOCKED": OperationalError, "SQLITE_READONLY": OperationalError,
    "SQLITE_INTERRUPT": OperationalError, "SQLITE_IOERR": OperationalError,
    "SQLITE_FULL": OperationalError, "SQLITE_CANTOPEN": OperationalError,
    "SQLITE_PROTOCOL": OperationalError, "SQLITE_EMPTY": OperationalError,
    "SQLITE_SCHEMA": OperationalError,
    "SQLITE_CORRUPT": DatabaseError,
    "SQLITE_TOOBIG": DataError,
    "SQLITE_CONSTRAINT": IntegrityError, "SQLITE_MISMATCH": IntegrityError,
    "SQLITE_MISUSE": InterfaceError, "SQLITE_RANGE": InterfaceError,
}.items():
    _PRIMARY_TO_CLASS[getattr(apsw, _name)] = _cls


def error_name(code: int) -> str:
    """The name of an (extended) SQLite result code, e.g. ``"SQLITE_CONSTRAINT_UNIQUE"``."""
    name = apsw.mapping_extended_result_codes.get(code)
    if name is None:
        name = apsw.mapping_result_codes.get(code & 0xFF, f"SQLITE_UNKNOWN_{code}")
    return name


def class_for_code(code: int) -> type[Error]:
    """The PEP 249 class the stdlib uses for a SQLite (extended) result code."""
    return _PRIMARY_TO_CLASS.get(code & 0xFF, DatabaseError)


def _message(exc: BaseException) -> str:
    msg = str(exc.args[0]) if exc.args else str(exc)
    # APSW prefixes messages with the class ("ConstraintError: UNIQUE ..."); sqlite3 doesn't.
    head, sep, tail = msg.partition(": ")
    if sep and head.endswith("Error") and head.isidentifier():
        msg = tail
    return msg


def _explain_encryption_error(exc: BaseException) -> Optional[BaseException]:
    import sys

    crypto = sys.modules.get("heliosdb.crypto")  # only once encryption was ever used
    if crypto is None:
        return None
    try:
        return crypto.explain(None, exc)
    except OSError:  # the file went away meanwhile: the original error says enough
        return None


def translate(exc: BaseException) -> BaseException:
    """Turn an ``apsw`` exception into the heliosdb (PEP 249) exception sqlite3 would raise.

    Non-apsw exceptions are returned unchanged. The original is kept as ``__cause__``.
    """
    if not isinstance(exc, apsw.Error):
        return exc
    if isinstance(exc, (apsw.IOError, apsw.CantOpenError)):
        # A page that failed authentication in the encryption VFS: the shim recorded the
        # file and page on this thread, wherever in the package the error surfaces.
        shim = _explain_encryption_error(exc)
        if shim is not None:
            return shim
    if isinstance(exc, (apsw.ConnectionClosedError, apsw.CursorClosedError)):
        new: Error = ProgrammingError(_message(exc))
    elif isinstance(exc, apsw.BindingsError):
        new = ProgrammingError(_message(exc))
    elif isinstance(exc, apsw.ThreadingViolationError):
        new = ProgrammingError(_message(exc))
    elif isinstance(exc, apsw.ExtensionLoadingError):
        new = OperationalError(_message(exc))
    else:
        code = getattr(exc, "extendedresult", None)
        if code is None:
            code = getattr(exc, "result", None)
        if code is None or code < 0:
            new = DatabaseError(_message(exc))
        else:
            new = class_for_code(code)(_message(exc))
            new.sqlite_errorcode = code
            new.sqlite_errorname = error_name(code)
    new.__cause__ = exc
    return new
