"""What a security officer, an auditor and a SIEM do with the log: the query, export,
forensics, retention and report methods of ``conn.audit``.

:class:`AuditAPI` is the base class of :class:`heliosdb.audit.capture.AuditSession`; its
methods work on ``self._db`` (the APSW connection), ``self.table`` (the audit table),
``self._cfg`` (the ``[audit]`` config) and ``self._config`` (the whole config), and
append events with ``self._write_now(events)`` (own transaction) or ``self._append``
(inside the open one), inside ``with self._internal():`` so that the audit authorizer
lets the writes through.

The work is done in :mod:`.query`, :mod:`.export`, :mod:`.forensics`, :mod:`.retention`
and :mod:`.reports`; this class only binds them to the session.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from ..errors import ProgrammingError


class AuditAPI:
    """Query, export, forensics, retention and reporting over the audit table."""

    # Provided by AuditSession (capture.py).
    _db: Any
    _cfg: Any
    _config: Any
    _conn: Any
    table: str

    # -- helpers shared by the modules ---------------------------------------------------
    def _record(self, operation: str, *, target: Optional[str] = None,
                details: Optional[dict] = None, success: bool = True,
                error: Optional[str] = None, reason: Optional[str] = None) -> None:
        """Append one product event (EXPORT, RETENTION_PURGE, LEGAL_HOLD ...) now."""
        make = self._event  # type: ignore[attr-defined]
        ev = make(operation, target=target, query=None, success=success, error=error,
                  details=details, reason=reason)
        if self._db.get_autocommit():
            self._write_now([ev])  # type: ignore[attr-defined]
        else:
            self._append([ev])  # type: ignore[attr-defined]

    def _require_autocommit(self, what: str) -> None:
        if not self._db.get_autocommit():
            raise ProgrammingError(f"{what} must run outside a transaction: commit or roll "
                                   "back first (it reads one committed snapshot)")

    def _db_path(self) -> Optional[str]:
        name = getattr(self._conn, "_database", None)
        if not name or name == ":memory:" or str(name).startswith("file::memory:"):
            return None
        try:
            return self._db.db_filename("main") or os.path.abspath(str(name))
        except Exception:  # noqa: BLE001
            return os.path.abspath(str(name))

    # -- 1. queries ------------------------------------------------------------------------
    def query(self) -> Any:
        """A query builder over the log: ``.operation() .user() .table() .success()
        .between() .session() .limit() .offset() .order()``, then iterate, ``.all()`` or
        ``.count()``. See :class:`heliosdb.audit.query.AuditQuery`."""
        from .query import AuditQuery

        return AuditQuery(self)

    def events(self, **filters: Any) -> list:
        """Shortcut: ``events(user="alice", operation="DELETE", limit=10)``."""
        q = self.query()
        for k, v in filters.items():
            if not hasattr(q, k) or k.startswith("_"):
                raise ProgrammingError(f"events(): unknown filter {k!r}")
            if k == "between":
                q = q.between(*v)
            else:
                q = getattr(q, k)(*v) if isinstance(v, tuple) else getattr(q, k)(v)
        return q.all()

    # -- 2. exports --------------------------------------------------------------------------
    def export(self, path: Any, format: str = "jsonl", *, after_id: Optional[int] = None,
               previous: Any = None, last_id: Optional[int] = None,
               gzip: Optional[bool] = None, checkpoint: Any = None,
               hostname: Optional[str] = None, record: bool = True) -> Any:
        """Export events to ``path``; return an :class:`heliosdb.audit.export.ExportManifest`.

        ``format``: ``"jsonl"``, ``"csv"``, ``"ocsf"`` (OCSF 6005 Datastore Activity) or
        ``"syslog"`` (RFC 5424); gzip when ``gzip=True`` or the path ends in ``.gz``.
        Incremental: ``after_id=`` the last id of the previous export, or ``previous=`` the
        previous manifest (or its path); the header then carries the chain head so that the
        receiver can check continuity with :func:`heliosdb.audit.export.verify_export`.
        ``checkpoint`` (a Checkpoint or its path) is embedded in the header. The export is
        itself recorded as an EXPORT event (``record=False`` to skip), which the next
        incremental export will contain.
        """
        from .export import export_head, export_events

        self._require_autocommit("export()")
        if previous is not None:
            if after_id is not None:
                raise ProgrammingError("give after_id= or previous=, not both")
            p_last, p_ck = export_head(previous)
            after_id = p_last
            if p_last > 0:
                with self._internal():  # type: ignore[attr-defined]
                    rows = list(self._db.execute(
                        f'SELECT checksum FROM "{self.table}" WHERE id = ?', (p_last,)))
                if rows and bytes(rows[0][0]).hex() != p_ck:
                    raise ProgrammingError(
                        f"the previous export ends with a checksum that event {p_last} does "
                        "not have: it is not an export of this log (or the log was rewritten)")
        self._flush_for_read()  # type: ignore[attr-defined]
        with self._internal():  # type: ignore[attr-defined]
            m = export_events(self._db, self.table, path, format=format, after_id=after_id,
                              last_id=last_id, gzip=gzip, checkpoint=checkpoint,
                              hostname=hostname)
        if record:
            self._record("EXPORT", target=self.table, details={
                "export_id": m.export_id, "format": m.format, "first_id": m.first_id,
                "last_id": m.last_id, "count": m.count, "file": os.path.basename(m.path)})
        return m

    def ship(self, to: Any, *, state: Any, **options: Any) -> Any:
        """Send what is new since the last acknowledged event to ``to`` (``parquet:DIR``,
        ``syslog+tcp://H:P``, ``syslog+tls://H:P``), recording progress in ``state`` (see
        :func:`heliosdb.audit.ship.ship`)."""
        from .ship import ship

        return ship(self, to, state=state, **options)

    # -- 2b. Merkle proofs (heliosdb/audit/merkle.py) ---------------------------------------
    def prove_inclusion(self, event_id: int, checkpoint: Any, *,
                        archives: Any = None) -> dict:
        """RFC 6962 inclusion proof of event ``event_id`` in the tree signed by
        ``checkpoint`` (version 2: a Checkpoint or its path), as a JSON-serialisable dict.
        Purged events are read from the retention ``archives`` (default: next to the
        database). Check it with :func:`heliosdb.audit.merkle.check_inclusion` or the
        stdlib script of docs/EXPORT_FORMAT.md (see :func:`heliosdb.audit.merkle.prove_inclusion`)."""
        from .merkle import prove_inclusion

        self._require_autocommit("prove_inclusion()")
        self._flush_for_read()  # type: ignore[attr-defined]
        with self._internal():  # type: ignore[attr-defined]
            return prove_inclusion(self._db, self.table, event_id, checkpoint,
                                   archives=archives)

    def prove_consistency(self, old_checkpoint: Any, new_checkpoint: Any, *,
                          archives: Any = None) -> dict:
        """RFC 6962 consistency proof that the tree signed by ``new_checkpoint`` extends the
        one signed by ``old_checkpoint`` (see :func:`heliosdb.audit.merkle.prove_consistency`)."""
        from .merkle import prove_consistency

        self._require_autocommit("prove_consistency()")
        self._flush_for_read()  # type: ignore[attr-defined]
        with self._internal():  # type: ignore[attr-defined]
            return prove_consistency(self._db, self.table, old_checkpoint, new_checkpoint,
                                     archives=archives)

    def verify_since(self, checkpoint: Any, **options: Any) -> Any:
        """Incremental verification: the events after ``checkpoint`` (a verified signed
        checkpoint, or its path) and the Merkle tree's consistency with it; the same as
        ``verify(checkpoint=..., since_checkpoint=True)``."""
        return self.verify(checkpoint=checkpoint,  # type: ignore[attr-defined]
                           since_checkpoint=True, **options)

    # -- 3. forensics ----------------------------------------------------------------------
    def timeline(self, user: Any = None, table: Any = None, since: Any = None, *,
                 until: Any = None, session: Any = None, operation: Any = None,
                 limit: Optional[int] = None) -> list:
        """Events of a user and/or table in time order (see
        :func:`heliosdb.audit.forensics.timeline`)."""
        from .forensics import timeline

        return timeline(self, user=user, table=table, since=since, until=until,
                        session=session, operation=operation, limit=limit)

    def suspicious(self, **options: Any) -> list:
        """Findings (mass deletes, unbounded writes, DROP TABLE, failure and denial bursts,
        after-hours activity, sensitive reads, audit tampering attempts); each names its
        event ids. Options: see :func:`heliosdb.audit.forensics.suspicious`."""
        from .forensics import suspicious

        return suspicious(self, **options)

    # -- 4. GDPR ---------------------------------------------------------------------------
    def access_report(self, identifiers: Any = (), *, user: Any = None, rowids: Any = None,
                      tables: Any = None, since: Any = None, include_reads: bool = True,
                      path: Any = None, record: bool = True) -> Any:
        """GDPR Art. 15: every event that touched the data subject's rows or was made by
        the subject (see :func:`heliosdb.audit.reports.access_report`)."""
        from .reports import access_report

        return access_report(self, identifiers, user=user, rowids=rowids, tables=tables,
                             since=since, include_reads=include_reads, path=path,
                             record=record)

    def erasure_report(self, identifiers: Any = (), *, user: Any = None, rowids: Any = None,
                       tables: Any = None, path: Any = None, record: bool = True) -> Any:
        """GDPR Art. 17: was the subject's data erased, when, by whom, and which audit
        events still hold it until retention purges them (see
        :func:`heliosdb.audit.reports.erasure_report`)."""
        from .reports import erasure_report

        return erasure_report(self, identifiers, user=user, rowids=rowids, tables=tables,
                              path=path, record=record)

    # -- 5. retention ------------------------------------------------------------------------
    def purge(self, now: Any = None, *, archive: Any = None, dry_run: bool = False) -> Any:
        """Archive expired events to gzip JSON Lines, delete them, record RETENTION_PURGE;
        blocked by a legal hold (see :func:`heliosdb.audit.retention.purge`)."""
        from .retention import purge

        return purge(self, now=now, archive=archive, dry_run=dry_run)

    def hold(self, reason: str, *, matter: Optional[str] = None) -> str:
        """Place a legal hold (blocks purge until released); returns the hold id."""
        from .retention import hold

        return hold(self, reason, matter=matter)

    def release(self, hold_id: Optional[str] = None, *, reason: Optional[str] = None) -> None:
        """Release a legal hold (the only one, or ``hold_id``)."""
        from .retention import release

        release(self, hold_id, reason=reason)

    def holds(self) -> list:
        """The legal holds in force."""
        from .retention import active_holds

        return active_holds(self)

    def retention_status(self, now: Any = None) -> dict:
        """Anchor, oldest event, what a purge at ``now`` would remove, holds."""
        from .retention import status

        return status(self, now=now)

    # -- 7. compliance report ----------------------------------------------------------------
    def report(self, path: Any = None, preset: Optional[str] = None, **options: Any) -> Any:
        """Write a self-contained HTML compliance report and its JSON next to it (see
        :func:`heliosdb.audit.reports.compliance_report`); returns the report data."""
        from .reports import compliance_report

        return compliance_report(self, path, preset=preset, **options)
