"""The tamper-evident audit log: capture, chain, verification, checkpoints.

Most users reach it through a connection opened with an audit config::

    conn = heliosdb.connect("app.db", config="hipaa", audit_user="alice")
    conn.audit.verify()                 # VerifyReport(ok=True, ...)
    conn.audit.checkpoint(signing_key, "head.checkpoint")

:func:`verify` checks a database file without opening it for writing.
"""
from __future__ import annotations

from typing import Any, Optional

from .checkpoint import Checkpoint, create_checkpoint
from .events import AuditEvent, EventFields
from ..errors import AuditIntegrityError
from .export import verify_export, verify_export_chain
from .store import append, ensure_schema, head, read_events
from .verify import FAULTS, VerifyReport, verify_connection

__all__ = ["verify", "VerifyReport", "Checkpoint", "AuditEvent", "EventFields",
           "AuditIntegrityError", "create_checkpoint", "verify_connection", "FAULTS",
           "append", "ensure_schema", "head", "read_events", "verify_export",
           "verify_export_chain"]


def verify(path: str, *, key: Any = None, table: str = "__audit_log",
           checkpoint: Any = None, public_key: Any = None, hmac_key: Optional[bytes] = None,
           since_checkpoint: bool = False, progress: Any = None) -> VerifyReport:
    """Verify the audit chain of the database file ``path``.

    ``key`` opens an encrypted database. ``checkpoint`` is a :class:`Checkpoint` or the
    path of a saved one. Returns a :class:`VerifyReport`; never a bare bool.
    """
    import apsw

    from ..crypto import open_connection
    from ..errors import OperationalError, translate

    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint.load(checkpoint)
    import os

    if not os.path.exists(path):
        raise OperationalError(f"{path}: no such database file")
    # Read-write (never create): after a crash SQLite must roll a hot journal back before
    # anything can be read, which a read-only connection cannot do. Verification itself
    # writes nothing. Read-only media fall back to a read-only open.
    db = None
    for flags in (apsw.SQLITE_OPEN_READWRITE, apsw.SQLITE_OPEN_READONLY):
        try:
            db = open_connection(str(path), flags=flags, uri=False, key=key, encryption=None)
            break
        except (apsw.CantOpenError, apsw.ReadOnlyError, apsw.PermissionsError) as exc:
            last = exc
        except apsw.Error as exc:
            raise translate(exc) from exc
    if db is None:
        raise translate(last) from last
    try:
        return verify_connection(db, table, checkpoint=checkpoint, public_key=public_key,
                                 hmac_key=hmac_key, since_checkpoint=since_checkpoint,
                                 progress=progress)
    finally:
        db.close()
