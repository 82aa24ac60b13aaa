"""Key operations recorded in the audit log: the recorder ``heliosdb.crypto.rekey`` is
handed (crypto knows nothing of audit: ``heliosdb/__init__.py`` registers this recorder
with :func:`heliosdb.crypto.rekey.set_key_event_recorder` when the package is imported).

A key operation (passphrase change, key slots, rotation, encrypt/decrypt) works on the
file, not through a connection, so its KEY_CHANGE / KEY_ROTATION event is appended here,
inside the transaction the key operation holds, to every audit log of the database.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import apsw

from . import store
from .events import EventFields

__all__ = ["KeyEventRecorder"]


class KeyEventRecorder:
    """What ``crypto.rekey`` needs from the audit log: which logs a database has, and how
    to append one key-operation event to one of them."""

    def audit_tables(self, conn: apsw.Connection, audit_table: Optional[str]) -> List[str]:
        """The audit tables of the database ``conn`` opens (none: nothing to record).
        ``audit_table`` limits it to that one (when it exists)."""
        names = {str(n).lower(): str(n) for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if audit_table is not None:
            return [audit_table] if audit_table.lower() in names else []
        found: List[str] = []
        if store.META_TABLE.lower() in names:
            for (t,) in conn.execute(
                    f"SELECT DISTINCT tbl FROM {store.META_TABLE} ORDER BY tbl"):
                if isinstance(t, str) and t.lower() in names and t not in found:
                    found.append(t)
        if store.DEFAULT_TABLE.lower() in names and store.DEFAULT_TABLE not in found:
            found.append(store.DEFAULT_TABLE)
        return found

    def append(self, conn: apsw.Connection, table: str, *, operation: str, user: str,
               session_id: str, reason: Optional[str], details: Dict[str, Any],
               error: Optional[BaseException] = None) -> None:
        """Append the event to ``table`` inside ``conn``'s open transaction."""
        ev = EventFields(
            operation=operation, target="main", user=user, session_id=session_id,
            query=None, affected_rows=None, success=0 if error is not None else 1,
            error=None if error is None else f"{type(error).__name__}: {error}",
            metadata={"details": details}, reason=reason)
        store.append(conn, table, [ev], max_query_length=None)

    def __repr__(self) -> str:
        return "<heliosdb.audit.keyops.KeyEventRecorder>"


