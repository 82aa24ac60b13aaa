"""Retention: purge expired events (archived first), and legal holds that block it.

How long an event stays in the database: ``AuditConfig.active_days_for(operation,
failed=...)``, i.e. ``retention_days - archive_days``, or a shorter per-operation /
per-category override (``retention_overrides``); failed and denied attempts count as
``SECURITY`` too. The rest of the retention is the archive's.

The chain is linear, so only a *prefix* of it can be removed without breaking it: a purge
removes the events from the start of the stored chain up to (not including) the first
event that has not expired yet. An event kept longer (say DDL kept 365 days) therefore
holds back the shorter-lived events after it until it expires itself; ``PurgeResult``
says which event blocks (``blocked_by``).

A purge, in one ``BEGIN IMMEDIATE`` transaction:

1. writes the expired events to a gzip JSON Lines archive (the export format, so
   :func:`heliosdb.audit.export.verify_export` checks it; written to a temporary name,
   fsynced and renamed);
2. deletes them (the only delete path of the audit table);
3. moves the anchor (``__audit_meta``: ``anchor_id``, ``anchor_checksum``,
   ``anchor_ts_us``) to the last purged event, so that ``verify()`` checks that the first
   remaining event links to it;
4. appends a RETENTION_PURGE event naming the range, the cutoff, the archive file and its
   SHA-256 (which binds the archive to the chain).

If the transaction fails the archive file is removed. Archive files are never deleted
by HeliosDB: keep them for ``archive_days`` and delete them by your own procedure.

Legal holds (``hold(reason)``) are kept in ``__audit_meta`` and recorded as LEGAL_HOLD /
LEGAL_HOLD_RELEASE events; a hold found in either place blocks purge (deleting the meta
row does not lift a hold the log still shows). A blocked purge is recorded as a failed
RETENTION_PURGE event and raises :class:`LegalHoldError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Optional

import apsw

from ..errors import OperationalError, ProgrammingError, translate
from . import store
from .events import EventFields, format_ts
from .query import to_us

__all__ = ["LegalHoldError", "PurgeResult", "purge", "hold", "release", "active_holds",
           "status", "plan"]

DAY_US = 86_400 * 1_000_000
#: How far ahead of this machine's clock purge(now=...) may be: clocks of the machines
#: sharing a file differ a little; a later "now" would delete events that have not expired.
MAX_CLOCK_SKEW_US = 5 * 60 * 1_000_000


def _clock_us() -> int:
    """The real time in UTC microseconds (the one clock purge() trusts)."""
    return time.time_ns() // 1000


def _purge_now(now: Any) -> int:
    """``now`` for a purge: the real time, or a caller's time at most
    :data:`MAX_CLOCK_SKEW_US` ahead of it; ProgrammingError otherwise."""
    real = _clock_us()
    if now is None:
        return real
    now_us = to_us(now, "now")
    if now_us > real + MAX_CLOCK_SKEW_US:
        raise ProgrammingError(
            f"purge(now={format_ts(now_us)}) is ahead of this machine's clock "
            f"({format_ts(real)}) by more than the allowed 5 minutes: retention is measured "
            "from the real time (a later 'now' would delete events that have not expired); "
            "omit now= or give a time no later than the clock plus 5 minutes")
    return now_us
HOLD_META = "legal_holds"
LAST_PURGE_META = "last_purge"


class LegalHoldError(OperationalError):
    """A purge was refused because a legal hold is in force."""


@dataclass(frozen=True)
class PurgeResult:
    """What a purge did (or, with ``dry_run``, would do)."""

    purged: int
    first_id: Optional[int]
    last_id: Optional[int]
    archive: Optional[str]
    archive_sha256: Optional[str]
    anchor_id: int
    anchor_checksum: str
    now_us: int
    blocked_by: Optional[int] = None
    blocked_reason: Optional[str] = None
    dry_run: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# --- holds --------------------------------------------------------------------------------

def _meta_holds(db: apsw.Connection, table: str) -> list[dict]:
    raw = store.get_meta(db, table, HOLD_META)
    if not raw:
        return []
    try:
        holds = json.loads(raw)
    except ValueError:
        return [{"id": "corrupt", "reason": "unreadable legal hold record: treated as held"}]
    return holds if isinstance(holds, list) else []


def _log_holds(db: apsw.Connection, table: str) -> dict[str, dict]:
    """Holds the log shows as placed and not released."""
    active: dict[str, dict] = {}
    sql = (f'SELECT id, ts_us, "user", operation, metadata, reason FROM "{table}" '
           "WHERE operation IN ('LEGAL_HOLD', 'LEGAL_HOLD_RELEASE') AND success = 1 "
           "ORDER BY id")
    for eid, ts, user, op, md, reason in db.execute(sql):
        try:
            d = (json.loads(md) or {}).get("details") or {}
        except (ValueError, AttributeError):
            d = {}
        hid = d.get("hold_id")
        if not hid:
            continue
        if op == "LEGAL_HOLD":
            active[hid] = {"id": hid, "reason": reason, "matter": d.get("matter"),
                           "user": user, "ts_us": ts, "event_id": eid}
        else:
            active.pop(hid, None)
    return active


def active_holds(audit: Any) -> list[dict]:
    """The legal holds in force: those recorded in ``__audit_meta`` and those the log
    shows as placed and not released (``source`` says where each was found)."""
    with audit._internal():
        try:
            meta = _meta_holds(audit._db, audit.table)
            logged = _log_holds(audit._db, audit.table)
        except apsw.Error as exc:
            raise translate(exc) from None
    out = []
    seen = set()
    for h in meta:
        h = dict(h)
        h["source"] = "meta+log" if h.get("id") in logged else "meta"
        out.append(h)
        seen.add(h.get("id"))
    for hid, h in logged.items():
        if hid not in seen:
            h = dict(h)
            h["source"] = "log"
            out.append(h)
    return out


def _txn(audit: Any, work: Any) -> Any:
    """Run ``work(db)`` in BEGIN IMMEDIATE ... COMMIT with the audit writes allowed."""
    audit._require_autocommit("this operation")
    db = audit._db
    with audit._internal():
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        except apsw.Error as exc:
            raise translate(exc) from None


def _append(audit: Any, db: apsw.Connection, ev: EventFields) -> None:
    store.append(db, audit.table, [ev], max_query_length=audit._cfg.max_query_length)


def hold(audit: Any, reason: str, *, matter: Optional[str] = None) -> str:
    """Place a legal hold; return its id. Purge is refused until it is released."""
    if not isinstance(reason, str) or not reason.strip():
        raise ProgrammingError("a legal hold needs a reason (the matter, the order ...)")
    audit._flush_for_read()
    hid = uuid.uuid4().hex[:12]

    def work(db: apsw.Connection) -> str:
        holds = _meta_holds(db, audit.table)
        holds.append({"id": hid, "reason": reason, "matter": matter, "user": audit.user,
                      "ts_us": time.time_ns() // 1000})
        store.set_meta(db, audit.table, HOLD_META, json.dumps(holds, sort_keys=True))
        _append(audit, db, audit._event("LEGAL_HOLD", target=audit.table, query=None,
                                        details={"hold_id": hid, "matter": matter},
                                        reason=reason))
        return hid

    return _txn(audit, work)


def release(audit: Any, hold_id: Optional[str] = None, *,
            reason: Optional[str] = None) -> None:
    """Release a legal hold: ``hold_id``, or the only one in force."""
    holds = active_holds(audit)
    if not holds:
        raise ProgrammingError("no legal hold is in force")
    if hold_id is None:
        if len(holds) > 1:
            raise ProgrammingError(f"{len(holds)} legal holds are in force "
                                   f"({', '.join(str(h.get('id')) for h in holds)}): "
                                   "name the one to release")
        hold_id = holds[0].get("id")
    if hold_id not in {h.get("id") for h in holds}:
        raise ProgrammingError(f"no legal hold {hold_id!r} is in force")
    audit._flush_for_read()

    def work(db: apsw.Connection) -> None:
        remaining = [h for h in _meta_holds(db, audit.table) if h.get("id") != hold_id]
        store.set_meta(db, audit.table, HOLD_META,
                       json.dumps(remaining, sort_keys=True) if remaining else None)
        _append(audit, db, audit._event("LEGAL_HOLD_RELEASE", target=audit.table, query=None,
                                        details={"hold_id": hold_id}, reason=reason))

    _txn(audit, work)


# --- purge --------------------------------------------------------------------------------

def plan(audit: Any, db: apsw.Connection, now_us: int) -> dict:
    """Which prefix of the chain has expired at ``now_us`` (read inside a transaction)."""
    cfg = audit._cfg
    anc = store.anchor(db, audit.table)
    bound_days = min([cfg.active_days, *cfg.retention_overrides.values()])
    bound = now_us - bound_days * DAY_US  # no event at or after this time has expired
    cache: dict[tuple, int] = {}
    first = last = last_ck = last_ts = None
    n = 0
    blocked_by = blocked_reason = None
    sql = (f'SELECT id, ts_us, operation, success, checksum FROM "{audit.table}" '
           "WHERE id > ? ORDER BY id")
    for eid, ts, op, ok, ck in db.execute(sql, (anc.id,)):
        if ts >= bound:
            break
        key = (op, ok != 1)
        days = cache.get(key)
        if days is None:
            days = cache[key] = cfg.active_days_for(op, failed=ok != 1)
        if ts >= now_us - days * DAY_US:
            blocked_by = eid
            blocked_reason = (f"event {eid} ({op}) is kept {days} days in the database, "
                              f"until {format_ts(ts + days * DAY_US)}; the chain can only "
                              "be purged from its start")
            break
        if first is None:
            first = eid
        last, last_ck, last_ts = eid, ck, ts
        n += 1
    return {"anchor": anc, "first": first, "last": last, "last_ck": last_ck,
            "last_ts": last_ts, "count": n, "blocked_by": blocked_by,
            "blocked_reason": blocked_reason}


def _archive_path(audit: Any, archive: Any, first: int, last: int, now_us: int) -> str:
    stamp = format_ts(now_us)[:19].replace("-", "").replace(":", "") + "Z"
    if archive is None:
        db = audit._db_path()
        if db is None:
            raise ProgrammingError("purge() of an in-memory database needs archive= (a "
                                   "directory or a file path)")
        base = os.path.basename(db)
        return os.path.join(os.path.dirname(db),
                            f"{base}.{audit.table}.{first}-{last}.{stamp}.jsonl.gz")
    archive = os.fspath(archive)
    if os.path.isdir(archive) or not archive.endswith(".gz"):
        os.makedirs(archive, exist_ok=True)
        return os.path.join(archive, f"{audit.table}.{first}-{last}.{stamp}.jsonl.gz")
    return archive


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def purge(audit: Any, *, now: Any = None, archive: Any = None,
          dry_run: bool = False) -> PurgeResult:
    """Archive and delete the expired prefix of the log; see the module docstring.

    ``now`` (datetime, ISO text or UTC microseconds; default: the clock) is the time the
    retention is measured from; it may be earlier than the clock (purging less) but at
    most :data:`MAX_CLOCK_SKEW_US` (5 minutes) later, else ProgrammingError. ``archive``: a directory (created if needed) or a file path
    ending in ``.gz`` for the gzip JSON Lines archive (default: next to the database).
    ``dry_run``: say what would happen. Raises :class:`LegalHoldError` while a hold is in force (after recording the refused
    attempt), ProgrammingError inside an open transaction.
    """
    from .export import export_events

    audit._require_autocommit("purge()")
    now_us = _purge_now(now)
    audit._flush_for_read()
    holds = active_holds(audit)
    if holds and not dry_run:
        why = "; ".join(f"{h.get('id')}: {h.get('reason')}" for h in holds)
        audit._record("RETENTION_PURGE", target=audit.table, success=False,
                      error=f"blocked by legal hold ({why})",
                      details={"now_us": now_us, "holds": [h.get("id") for h in holds]})
        raise LegalHoldError(f"purge refused: {len(holds)} legal hold(s) in force ({why})")

    if dry_run:
        with audit._internal():
            db = audit._db
            try:
                db.execute("BEGIN")
                try:
                    p = plan(audit, db, now_us)
                finally:
                    db.execute("COMMIT")
            except apsw.Error as exc:
                raise translate(exc) from None
        return PurgeResult(p["count"], p["first"], p["last"], None, None, p["anchor"].id,
                           p["anchor"].checksum.hex(), now_us, p["blocked_by"],
                           p["blocked_reason"] or ("legal hold" if holds else None),
                           dry_run=True)

    written: list[str] = []

    def work(db: apsw.Connection) -> PurgeResult:
        p = plan(audit, db, now_us)
        anc = p["anchor"]
        details: dict[str, Any] = {"now_us": now_us, "now": format_ts(now_us),
                                   "purged": p["count"], "blocked_by": p["blocked_by"]}
        if p["count"] == 0:
            _append(audit, db, audit._event("RETENTION_PURGE", target=audit.table, query=None,
                                            details=details, affected_rows=0))
            return PurgeResult(0, None, None, None, None, anc.id, anc.checksum.hex(), now_us,
                               p["blocked_by"], p["blocked_reason"])
        path = _archive_path(audit, archive, p["first"], p["last"], now_us)
        written.append(path)
        cfg = audit._cfg
        export_events(db, audit.table, path, format="jsonl", after_id=anc.id,
                      last_id=p["last"], gzip=True, now_us=now_us,
                      extra_header={"archive": True, "purge_now_us": now_us,
                                    "retention_days": cfg.retention_days,
                                    "archive_days": cfg.archive_days,
                                    "retention_overrides": dict(cfg.retention_overrides)})
        digest = _sha256_file(path)
        # The Merkle tree at the new anchor: the tree over the remaining log starts from it
        # without the archive (recorded in the meta table and, proven by the chain, in the
        # RETENTION_PURGE event). None for a log purged before trees existed.
        from . import merkle
        start = merkle.tree_at_anchor(db, audit.table)
        tree = (merkle.fold_stored(db, audit.table, start[0], start[1], p["last"])
                if start is not None else None)
        t = store.quoted(audit.table)
        db.execute(f"DELETE FROM {t} WHERE id > ? AND id <= ?", (anc.id, p["last"]))
        deleted = db.changes()
        if deleted != p["count"]:
            raise OperationalError(f"purge expected to delete {p['count']} events, deleted "
                                   f"{deleted}: the log has a gap; run verify()")
        store.set_meta(db, audit.table, "anchor_id", p["last"])
        store.set_meta(db, audit.table, "anchor_checksum", bytes(p["last_ck"]))
        store.set_meta(db, audit.table, "anchor_ts_us", p["last_ts"])
        details.update({"first_id": p["first"], "last_id": p["last"],
                        "anchor_checksum": bytes(p["last_ck"]).hex(),
                        "archive": os.path.basename(path), "archive_sha256": digest})
        if tree is not None:
            store.set_meta(db, audit.table, merkle.ANCHOR_TREE_META, merkle.pack_tree(*tree))
            details["tree_frontier"] = [h.hex() for h in merkle.split_frontier(tree[1])]
        store.set_meta(db, audit.table, LAST_PURGE_META, json.dumps(details, sort_keys=True))
        _append(audit, db, audit._event("RETENTION_PURGE", target=audit.table, query=None,
                                        details=details, affected_rows=p["count"]))
        return PurgeResult(p["count"], p["first"], p["last"], path, digest, p["last"],
                           bytes(p["last_ck"]).hex(), now_us, p["blocked_by"],
                           p["blocked_reason"])

    try:
        return _txn(audit, work)
    except BaseException:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise


def status(audit: Any, now: Any = None) -> dict:
    """Retention facts for reports: anchor, oldest and newest event, holds, what a purge
    would remove now, the last purge."""
    now_us = time.time_ns() // 1000 if now is None else to_us(now, "now")
    audit._flush_for_read()
    db = audit._db
    with audit._internal():
        try:
            db.execute("BEGIN")
            try:
                p = plan(audit, db, now_us)
                oldest = list(db.execute(f'SELECT id, ts_us FROM "{audit.table}" '
                                         "ORDER BY id LIMIT 1"))
                last_purge = store.get_meta(db, audit.table, LAST_PURGE_META)
            finally:
                db.execute("COMMIT")
        except apsw.Error as exc:
            raise translate(exc) from None
    cfg = audit._cfg
    return {
        "retention_days": cfg.retention_days, "archive_days": cfg.archive_days,
        "active_days": cfg.active_days,
        "retention_overrides": dict(cfg.retention_overrides),
        "anchor_id": p["anchor"].id, "anchor_checksum": p["anchor"].checksum.hex(),
        "oldest_id": oldest[0][0] if oldest else None,
        "oldest_time": format_ts(oldest[0][1]) if oldest else None,
        "purgeable_now": p["count"], "blocked_by": p["blocked_by"],
        "blocked_reason": p["blocked_reason"],
        "last_purge": json.loads(last_purge) if last_purge else None,
        "legal_holds": active_holds(audit),
    }
