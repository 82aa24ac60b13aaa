"""Reports over the audit log: GDPR data-subject reports and the compliance report.

GDPR (Art. 15 access, Art. 17 erasure)
    A data subject is identified by values that appear in their rows (an e-mail, a customer
    number: ``identifiers``), by known rows (``rowids={"customers": [42]}``) and/or as a
    session user (``user=``: events *made by* the subject). The log is walked in order;
    a row is the subject's when its captured values contain an identifier, and stays the
    subject's (by table and rowid) until it is deleted, so later changes that no longer
    show the identifier are still found. Without captured row values (``capture_row_values
    = false``) only the statement text can match (``query_text``: literal values in SQL;
    bound parameters are not logged). SELECTs of a table that held the subject's rows at
    the time are listed as ``possible_read`` (the log does not say which rows a SELECT
    returned).

Compliance report
    :func:`compliance_report` writes a self-contained HTML page (inline CSS and an inline
    SVG chart of activity over time; no script, no external resource) and the same data as
    JSON next to it: config in force and how it compares with a preset, encryption status,
    coverage by operation, verification result, checkpoints, retention and legal holds,
    and the findings of :func:`heliosdb.audit.forensics.suspicious`.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import apsw

from ..errors import ProgrammingError, translate
from .events import format_ts
from .query import to_us

__all__ = ["SubjectReport", "access_report", "erasure_report", "compliance_report",
           "render_html", "activity_buckets"]

DAY_US = 86_400 * 1_000_000


# ============================================================================================
# GDPR
# ============================================================================================

@dataclass
class SubjectReport:
    """A data-subject report (``kind`` "access" or "erasure"). ``to_dict()`` for JSON."""

    kind: str
    generated: str
    subject: dict
    events: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    erasure: Optional[dict] = None

    @property
    def event_ids(self) -> list[int]:
        return [e["id"] for e in self.events]

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Any) -> str:
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False, default=str)
        return path


class _Matcher:
    def __init__(self, identifiers: Any) -> None:
        if isinstance(identifiers, (str, int)):
            identifiers = [identifiers]
        self.strs: set[str] = set()
        self.ints: set[int] = set()
        for i in identifiers or ():
            if isinstance(i, bool):
                raise ProgrammingError("identifiers: booleans cannot identify a person")
            if isinstance(i, int):
                self.ints.add(i)
                self.strs.add(str(i))
            elif isinstance(i, str) and i.strip():
                self.strs.add(i.casefold())
            else:
                raise ProgrammingError(f"identifiers: expected text or integers, got {i!r}")

    def __bool__(self) -> bool:
        return bool(self.strs or self.ints)

    def value(self, v: Any) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, int):
            return v in self.ints
        if isinstance(v, str):
            return v.casefold() in self.strs
        return False

    def any_value(self, values: Any) -> bool:
        if isinstance(values, dict):
            return any(self.any_value(v) for v in values.values())
        if isinstance(values, list):
            return any(self.any_value(v) for v in values)
        return self.value(values)

    def text(self, s: Optional[str]) -> bool:
        if not s:
            return False
        s = s.casefold()
        return any(len(i) >= 3 and i in s for i in self.strs)


def _rows(text: Optional[str]) -> list[dict]:
    if not text:
        return []
    try:
        v = json.loads(text)
    except ValueError:
        return []
    return [r for r in v if isinstance(r, dict)] if isinstance(v, list) else []


def _subject_ref(m: _Matcher, user: Any) -> str:
    """A stable reference to the subject that does not store the identifiers in clear."""
    parts = sorted(m.strs) + [f"user:{user}"]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _walk_subject(audit: Any, m: _Matcher, user: Any, rowids: Any, tables: Any,
                  since: Any, include_reads: bool) -> tuple[list[dict], dict, dict]:
    users = {user} if isinstance(user, str) else set(user or ())
    table_filter = None
    if tables is not None:
        table_filter = {t.lower() for t in ([tables] if isinstance(tables, str) else tables)}
    tracked: dict[str, set] = {}
    for t, ids in (rowids or {}).items():
        tracked.setdefault(t.lower(), set()).update(int(i) for i in ids)
    ever: dict[str, set] = {t: set(s) for t, s in tracked.items()}
    q = audit.query()
    if since is not None:
        q = q.since(since)
    cols = ("id", "ts_us", "user", "operation", "target", "query", "success", "metadata",
            "old_values", "new_values", "affected_rows")
    sql, args = q.sql()
    sql = sql.replace(sql[len("SELECT "):sql.index(" FROM ")],
                      ", ".join(f'"{c}"' for c in cols), 1)
    out: list[dict] = []
    removed: list[dict] = []  # deletions / anonymisations of the subject's rows
    param_tables: set[str] = set()
    for row in q._run(sql, args):
        eid, ts, u, op, target, text, ok, md, old, new, nrows = row
        targets = [t for t in (target or "").split(",") if t]
        first_t = targets[0].lower() if targets else ""
        matches: list[str] = []
        rows_hit: list[dict] = []
        if u in users:
            matches.append("actor")
        olds, news = _rows(old), _rows(new)
        if olds or news:
            by_rowid: dict[tuple, dict] = {}
            for r in olds:
                by_rowid.setdefault(((r.get("table") or first_t).lower(), r.get("rowid")),
                                    {})["old"] = r.get("values")
            for r in news:
                by_rowid.setdefault(((r.get("table") or first_t).lower(), r.get("rowid")),
                                    {})["new"] = r.get("values")
            for (tbl, rid), vals in by_rowid.items():
                if table_filter is not None and tbl not in table_filter:
                    continue
                known = rid in tracked.get(tbl, ())
                in_old = m.any_value(vals.get("old"))
                in_new = m.any_value(vals.get("new"))
                if not (known or in_old or in_new):
                    continue
                change = "insert" if "old" not in vals else (
                    "delete" if "new" not in vals else "update")
                rows_hit.append({"table": tbl, "rowid": rid, "change": change})
                if ok != 1:
                    continue
                if change == "delete":
                    tracked.get(tbl, set()).discard(rid)
                    removed.append({"event_id": eid, "time": format_ts(ts), "user": u,
                                    "table": tbl, "rowid": rid, "how": "deleted"})
                else:
                    tracked.setdefault(tbl, set()).add(rid)
                    ever.setdefault(tbl, set()).add(rid)
                    if change == "update" and in_old and not in_new and m:
                        removed.append({"event_id": eid, "time": format_ts(ts), "user": u,
                                        "table": tbl, "rowid": rid,
                                        "how": "identifiers overwritten"})
            if rows_hit:
                matches.append("row_values")
        elif op in ("INSERT", "UPDATE", "DELETE", "SELECT") and m.text(text) and \
                (table_filter is None or table_filter & {t.lower() for t in targets}):
            matches.append("query_text")
        if md and m and m.any_value(_md_values(md)):
            matches.append("metadata")
            if first_t and m.any_value((_md_values(md) or {}).get("params")):
                param_tables.add(first_t)  # a table the subject's values were bound to
            if op == "DELETE" and ok == 1 and (nrows or 0) > 0 and not rows_hit \
                    and m.any_value((_md_values(md) or {}).get("params")):
                # No row values, but the DELETE was bound to the subject's identifier.
                removed.append({"event_id": eid, "time": format_ts(ts), "user": u,
                                "table": first_t, "rowid": None,
                                "how": "deleted (bound parameters)", "rows": nrows})
        if not matches and include_reads and op == "SELECT" and ok == 1 and \
                any(tracked.get(t.lower()) for t in targets):
            matches.append("possible_read")
        if matches:
            out.append({"id": eid, "time": format_ts(ts), "user": u, "operation": op,
                        "target": target, "success": ok, "affected_rows": nrows,
                        "query": text, "match": matches, "rows": rows_hit})
    state = {"tracked": {t: sorted(s) for t, s in tracked.items() if s},
             "ever": {t: sorted(s) for t, s in ever.items() if s}}
    return out, state, {"removed": removed, "param_tables": param_tables}


def _md_values(md: str) -> Any:
    try:
        v = json.loads(md)
    except ValueError:
        return None
    if isinstance(v, dict):
        v = {k: x for k, x in v.items() if k not in ("database_name", "execution_time_ms")}
    return v


def _summary(events: list[dict]) -> dict:
    by_op: dict[str, int] = {}
    by_match: dict[str, int] = {}
    actors: dict[str, int] = {}
    for e in events:
        by_op[e["operation"]] = by_op.get(e["operation"], 0) + 1
        for k in e["match"]:
            by_match[k] = by_match.get(k, 0) + 1
        actors[str(e["user"])] = actors.get(str(e["user"]), 0) + 1
    return {"events": len(events), "by_operation": by_op, "by_match": by_match,
            "actors": actors, "first": events[0]["time"] if events else None,
            "last": events[-1]["time"] if events else None}


def _check_subject(identifiers: Any, user: Any, rowids: Any, audit: Any = None) -> _Matcher:
    m = _Matcher(identifiers)
    if not m and not user and not rowids:
        raise ProgrammingError("identify the data subject: identifiers=, user= or rowids=")
    if audit is not None and getattr(audit._cfg, "capture_parameters", False):
        # Redacted parameters are recorded as keyed hashes: look for those too.
        for v in list(m.ints) + [i for i in (
                [identifiers] if isinstance(identifiers, str) else identifiers or ())
                if isinstance(i, str)]:
            m.strs.add(audit.keyed_hash(v))
    return m


def access_report(audit: Any, identifiers: Any = (), *, user: Any = None, rowids: Any = None,
                  tables: Any = None, since: Any = None, include_reads: bool = True,
                  path: Any = None, record: bool = True) -> SubjectReport:
    """Every event that touched the subject's rows or was made by the subject.

    Each event says how it matched: ``actor`` (made by ``user``), ``row_values`` (captured
    values of one of the subject's rows), ``query_text`` (an identifier in the SQL text),
    ``metadata`` (an identifier in the event's context) or ``possible_read`` (a SELECT of
    a table holding the subject's rows at that time). The request itself is recorded as
    a DATA_SUBJECT_REQUEST event that names the subject by a hash only.
    """
    m = _check_subject(identifiers, user, rowids, audit)
    events, state, _ = _walk_subject(audit, m, user, rowids, tables, since, include_reads)
    rep = SubjectReport("access", format_ts(time.time_ns() // 1000),
                        {"identifiers": sorted(m.strs), "user": user,
                         "ref": _subject_ref(m, user), "rows": state["ever"]},
                        events, _summary(events))
    if record:
        audit._record("DATA_SUBJECT_REQUEST", details={
            "kind": "access", "subject_ref": rep.subject["ref"], "events": len(events)})
    if path is not None:
        rep.save(path)
    return rep


def _live_rows(audit: Any, m: _Matcher, tables: Iterable[str], tracked: dict) -> list[dict]:
    """Rows of the live tables that are still the subject's (tracked rowids, or holding an
    identifier)."""
    out = []
    db = audit._db
    with audit._internal():
        try:
            names = {r[0].lower(): r[0] for r in db.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%'")}
            for t in sorted(set(tables)):
                real = names.get(t.lower())
                if real is None or real.lower() in (audit.table.lower(), "__audit_meta"):
                    continue
                q = '"' + real.replace('"', '""') + '"'
                try:
                    cur = db.execute(f"SELECT rowid, * FROM {q}")
                except apsw.SQLError:  # WITHOUT ROWID table
                    cur = db.execute(f"SELECT NULL, * FROM {q}")
                want = set(tracked.get(t.lower(), ()))
                for row in cur:
                    rid, vals = row[0], row[1:]
                    if rid in want or (m and any(m.value(v) for v in vals)):
                        out.append({"table": real, "rowid": rid,
                                    "holds_identifier": bool(m and any(m.value(v)
                                                                       for v in vals))})
        except apsw.Error as exc:
            raise translate(exc) from None
    return out


def erasure_report(audit: Any, identifiers: Any = (), *, user: Any = None,
                   rowids: Any = None, tables: Any = None, path: Any = None,
                   record: bool = True, now: Any = None) -> SubjectReport:
    """Has the subject's data been erased (Art. 17), when and by whom, and what is left.

    ``erasure`` holds: ``erased`` (no live row of the subject remains), ``removals``
    (DELETEs of the subject's rows, and UPDATEs that overwrote the identifiers),
    ``remaining_rows`` (live rows still the subject's), and ``audit_copies``: the audit
    events that still hold the subject's values (row values, SQL text, context), with the
    date each leaves the database under the retention config and the date its archive
    may be destroyed; a legal hold postpones both.
    """
    m = _check_subject(identifiers, user, rowids, audit)
    events, state, extra = _walk_subject(audit, m, user, rowids, tables, None, False)
    seen_tables = set(state["ever"]) | extra["param_tables"] | {t.lower() for t in (
        [tables] if isinstance(tables, str) else (tables or ()))}
    remaining = _live_rows(audit, m, seen_tables, state["tracked"])
    cfg = audit._cfg
    holds = audit.holds()
    copies = []
    latest_db = latest_archive = None
    for e in events:
        if not set(e["match"]) & {"row_values", "query_text", "metadata"}:
            continue
        ts = to_us(e["time"])
        failed = e["success"] != 1
        leave = ts + cfg.active_days_for(e["operation"], failed=failed) * DAY_US
        gone = ts + cfg.retention_for(e["operation"], failed=failed) * DAY_US
        latest_db = max(latest_db or leave, leave)
        latest_archive = max(latest_archive or gone, gone)
        copies.append({"id": e["id"], "operation": e["operation"], "match": e["match"],
                       "leaves_database": format_ts(leave), "archive_until": format_ts(gone)})
    # Never claim an erasure that nothing proves: with no removal found and no row left,
    # the log cannot tell an erased subject from one it never saw.
    if remaining:
        erased: Optional[bool] = False
        evidence = "remaining_rows"
    elif extra["removed"]:
        erased, evidence = True, "removals"
    else:
        erased, evidence = None, "none"
    erasure = {
        "erased": erased, "evidence": evidence,
        "evidence_note": (
            "no event shows this subject's data being stored or removed and no live row "
            "holds it: nothing proves an erasure (capture_parameters or capture_row_values "
            "record the values statements are bound to)") if evidence == "none" else None,
        "removals": extra["removed"], "remaining_rows": remaining,
        "audit_copies": copies,
        "audit_copies_leave_database": format_ts(latest_db) if latest_db else None,
        "audit_copies_archive_until": format_ts(latest_archive) if latest_archive else None,
        "legal_holds": holds,
        "note": ("The audit log is append-only and hash-chained: events holding the "
                 "subject's values cannot be altered; they leave the database at retention "
                 "purge and the archives at the end of the retention period "
                 "(Art. 17(3)(b)/(e) exemptions: legal obligation, legal claims)."
                 + (" A legal hold is in force: nothing is purged until it is released."
                    if holds else "")),
    }
    rep = SubjectReport("erasure", format_ts(time.time_ns() // 1000),
                        {"identifiers": sorted(m.strs), "user": user,
                         "ref": _subject_ref(m, user), "rows": state["ever"]},
                        events, _summary(events), erasure)
    if record:
        audit._record("DATA_SUBJECT_REQUEST", details={
            "kind": "erasure", "subject_ref": rep.subject["ref"], "events": len(events),
            "erased": erasure["erased"], "remaining_rows": len(remaining)})
    if path is not None:
        rep.save(path)
    return rep


# ============================================================================================
# Compliance report
# ============================================================================================

_BUCKETS = [(3_600, "hour"), (6 * 3_600, "6 hours"), (86_400, "day"), (7 * 86_400, "week"),
            (30 * 86_400, "30 days"), (365 * 86_400, "year")]


def activity_buckets(audit: Any, lo: Optional[int], hi: Optional[int],
                     max_buckets: int = 120) -> dict:
    """Events per time bucket (successes and failures) between ``lo`` and ``hi``."""
    db = audit._db
    t = f'"{audit.table}"'
    # The query builder's bounds: a time range is also an id range (ts_us grows with id),
    # so the primary key finds it on logs that have no time index.
    w, args = audit.query().between(lo, hi)._where()
    with audit._internal():
        try:
            span = list(db.execute(f"SELECT min(ts_us), max(ts_us) FROM {t}{w}", args))[0]
        except apsw.Error as exc:
            raise translate(exc) from None
    if span[0] is None:
        return {"bucket": None, "bucket_seconds": None, "buckets": []}
    width = (span[1] - span[0]) / 1e6
    secs, label = _BUCKETS[-1]
    for s, lab in _BUCKETS:
        if width / s <= max_buckets:
            secs, label = s, lab
            break
    size = secs * 1_000_000
    with audit._internal():
        try:
            rows = list(db.execute(
                f"SELECT ts_us / {size} AS b, count(*), sum(success != 1) FROM {t}{w} "
                "GROUP BY b ORDER BY b", args))
        except apsw.Error as exc:
            raise translate(exc) from None
    return {"bucket": label, "bucket_seconds": secs,
            "buckets": [{"start": format_ts(b * size), "events": n, "failed": f or 0}
                        for b, n, f in rows]}


def _coverage(audit: Any, lo: Optional[int], hi: Optional[int]) -> list[dict]:
    from ..config import category_of

    q = audit.query().between(lo, hi)
    where, args = q._where()
    sql = (f'SELECT operation, count(*), sum(success != 1), min(ts_us), max(ts_us), '
           f'count(DISTINCT "user") FROM "{audit.table}"{where} GROUP BY operation '
           "ORDER BY count(*) DESC")
    out = []
    for op, n, failed, t0, t1, users in q._run(sql, args):
        out.append({"operation": op, "category": category_of(op), "events": n,
                    "failed": failed or 0, "users": users, "first": format_ts(t0),
                    "last": format_ts(t1)})
    return out


_PRESET_BOOLS = ("log_ddl", "log_dml", "log_select", "log_transactions", "log_auth",
                 "enable_checksums", "checksums_mandatory", "capture_row_values",
                 "require_reason")
_CM_BOOLS = ("client_ip", "application_name", "database_name", "execution_time",
             "custom_fields")


def _preset_check(config: Any, preset: str, storage: dict) -> list[dict]:
    from ..config import load_config

    ref = load_config(preset)
    a, r = config.audit, ref.audit
    out = []

    def add(key: str, required: Any, actual: Any, ok: bool) -> None:
        out.append({"key": key, "required": required, "actual": actual, "ok": bool(ok)})

    add("audit.enabled", True, a.enabled, a.enabled)
    for k in _PRESET_BOOLS:
        if getattr(r, k):
            add(f"audit.{k}", True, getattr(a, k), getattr(a, k))
    for k in _CM_BOOLS:
        if getattr(r.capture_metadata, k):
            add(f"audit.capture_metadata.{k}", True, getattr(a.capture_metadata, k),
                getattr(a.capture_metadata, k))
    add("audit.retention_days", f">= {r.retention_days}", a.retention_days,
        a.retention_days >= r.retention_days)
    for k, v in r.retention_overrides.items():
        actual = a.retention_for(k)
        add(f"audit.retention_overrides.{k}", f">= {v}", actual, actual >= v)
    if ref.encryption.enabled:
        enc = bool(storage.get("encryption_enabled"))
        add("encryption (at rest)", True, enc, enc)
    return out


def _storage(audit: Any) -> dict:
    try:
        info = dict(audit._conn.storage_info())
    except Exception as exc:  # noqa: BLE001 - the report must still be written
        return {"error": str(exc)}
    for k, v in list(info.items()):
        if isinstance(v, (bytes, bytearray)):
            info[k] = bytes(v).hex()
    return info


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    return v


def compliance_report(audit: Any, path: Any = None, *, preset: Optional[str] = None,
                      since: Any = None, until: Any = None, checkpoint: Any = None,
                      public_key: Any = None, hmac_key: Optional[bytes] = None,
                      findings: Optional[dict] = None, now: Any = None,
                      record: bool = True) -> dict:
    """Write the compliance report: HTML at ``path`` (default: next to the database) and
    JSON next to it (same name, ``.json``). Returns the report data, with ``html_path``
    and ``json_path``.

    ``preset`` names the preset to check the config against (default: the config's own
    name when it is a preset). ``since``/``until`` limit coverage, chart and findings
    (verification always covers the whole stored chain). ``checkpoint`` (a Checkpoint or
    its path) with ``public_key``/``hmac_key`` verifies against a signed head.
    ``findings`` are options for ``suspicious()``.
    """
    from ..config import preset_names
    from .checkpoint import Checkpoint
    from .store import get_meta

    audit._require_autocommit("report()")
    audit._flush_for_read()
    now_us = time.time_ns() // 1000 if now is None else to_us(now, "now")
    lo = None if since is None else to_us(since, "since")
    hi = None if until is None else to_us(until, "until")
    cfg = audit._config
    if preset is None and cfg.name in preset_names():
        preset = cfg.name
    if path is None:
        db = audit._db_path()
        if db is None:
            raise ProgrammingError("report() of an in-memory database needs a path")
        stamp = format_ts(now_us)[:19].replace("-", "").replace(":", "")
        path = f"{db}.audit-report.{stamp}Z.html"
    path = os.fspath(path)
    json_path = os.path.splitext(path)[0] + ".json"

    storage = _storage(audit)
    cp = checkpoint
    if cp is not None and not isinstance(cp, Checkpoint):
        cp = Checkpoint.load(cp)
    vr = audit.verify(checkpoint=cp, public_key=public_key, hmac_key=hmac_key) \
        if cp is not None else audit.verify()
    head = audit.head()
    with audit._internal():
        cp_seq = get_meta(audit._db, audit.table, "checkpoint_seq", 0)
        db_id = get_meta(audit._db, audit.table, "database_id")
        last_cp_text = get_meta(audit._db, audit.table, "last_checkpoint")
    cp_info: dict[str, Any] = {"taken": int(cp_seq or 0)}
    if cp is not None:
        cp_info.update({"seq": cp.seq, "event_id": cp.event_id, "checksum": cp.checksum.hex(),
                        "created": format_ts(cp.created_us), "algorithm": cp.algorithm,
                        "key_id": cp.key_id, "verified": vr.ok})
    elif last_cp_text:
        try:
            lc = Checkpoint.from_text(str(last_cp_text))
            cp_info.update({"seq": lc.seq, "event_id": lc.event_id,
                            "created": format_ts(lc.created_us), "algorithm": lc.algorithm,
                            "key_id": lc.key_id, "verified": None})
        except ProgrammingError:
            pass
    fnd = audit.suspicious(since=lo, until=hi, **(findings or {}))
    coverage = _coverage(audit, lo, hi)
    seen_cats = {c["category"] for c in coverage}
    a = cfg.audit
    configured = {"DDL": a.log_ddl, "DML": a.log_dml, "QUERY": a.log_select,
                  "TRANSACTION": a.log_transactions, "SECURITY": a.log_auth}
    data = {
        "title": "HeliosDB audit compliance report",
        "generated": format_ts(now_us),
        "database": audit._db_path() or ":memory:",
        "database_id": db_id,
        "table": audit.table,
        "config": {"name": cfg.name, "source": cfg.source, "description": cfg.description,
                   **_jsonable(cfg.to_dict())},
        "preset": preset,
        "preset_check": _preset_check(cfg, preset, storage) if preset else [],
        "encryption": storage,
        "head": {"last_id": head.last_id, "last_checksum": bytes(head.last_checksum).hex(),
                 "last_time": format_ts(head.last_ts_us) if head.last_ts_us else None,
                 "count": head.count},
        "verification": {"ok": vr.ok, "fault": vr.fault, "message": vr.message,
                         "events_checked": vr.events_checked,
                         "first_bad_id": vr.first_bad_id, "with_checkpoint": cp is not None},
        "checkpoint": cp_info,
        "coverage": coverage,
        "categories": [{"category": c, "configured": v, "observed": c in seen_cats}
                       for c, v in configured.items()],
        "activity": activity_buckets(audit, lo, hi),
        "retention": _jsonable(audit.retention_status(now=now_us)),
        "findings": [f.to_dict() for f in fnd],
        "period": {"since": format_ts(lo) if lo is not None else None,
                   "until": format_ts(hi) if hi is not None else None},
    }
    data["summary"] = {
        "events": sum(c["events"] for c in coverage),
        "failed": sum(c["failed"] for c in coverage),
        "operations": len(coverage),
        "findings_high": sum(f.severity == "high" for f in fnd),
        "findings": len(fnd),
        "preset_gaps": sum(not c["ok"] for c in data["preset_check"]),
        "verified": vr.ok,
        "encrypted": bool(storage.get("encryption_enabled")),
    }
    page = render_html(data)
    _write(path, page)
    data["html_path"] = path
    data["json_path"] = json_path
    _write(json_path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
    if record:
        audit._record("EXPORT", target=audit.table, details={
            "kind": "compliance_report", "file": os.path.basename(path), "preset": preset,
            "verified": vr.ok, "findings": len(fnd)})
    return data


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


# --- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#1d2330;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;
border-bottom:1px solid #ccd;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #dde;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#12733a;font-weight:600}.bad{color:#b3261e;font-weight:600}
.sev-high{background:#fde8e7}.sev-medium{background:#fff4dc}.sev-low{background:#eef5ff}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #dde;border-radius:6px;
padding:.6em 1em;min-width:9em}.card b{display:block;font-size:1.4em}
code{font-size:.85em;word-break:break-all}.muted{color:#667}
.ts{white-space:nowrap;font-variant-numeric:tabular-nums}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _yes(v: Any) -> str:
    return '<span class="ok">yes</span>' if v else '<span class="bad">no</span>'


def _when(iso: str) -> Any:
    import datetime as _dt

    return _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _axis_label(t: Any, secs: int) -> str:
    """A time for the axis: the date, and the time of day when buckets are under a day."""
    return t.strftime("%Y-%m-%d %H:%M" if secs < 86_400 else "%Y-%m-%d")


def _svg_chart(act: dict, width: int = 1000, height: int = 250) -> str:
    """Bars of events per bucket on a time axis: a bucket without events is an empty
    slot (so a three-day gap shows as one), ticks give the time at their place, and a
    legend says which colour is which. One ``g.bar`` per bucket that has events."""
    import datetime as _dt

    buckets = act.get("buckets") or []
    if not buckets:
        return '<p class="muted">No events in the period.</p>'
    secs = int(act.get("bucket_seconds") or 3_600)
    step = _dt.timedelta(seconds=secs)
    t0 = _when(buckets[0]["start"])
    slots = [round((_when(b["start"]) - t0) / step) for b in buckets]
    n = slots[-1] + 1                       # the axis spans every bucket, empty or not
    t_end = t0 + n * step
    left, right, bottom, top = 56, 16, 46, 26
    plot_w, plot_h = width - left - right, height - bottom - top
    peak = max(b["events"] for b in buckets) or 1
    bw = plot_w / n
    base = top + plot_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" id="activity-chart" '
             f'style="max-width:100%;height:auto" font-family="system-ui,sans-serif">',
             f'<title>Audit events per {_e(act.get("bucket"))}, '
             f'{_e(_axis_label(t0, secs))} to {_e(_axis_label(t_end, secs))}</title>',
             # legend
             f'<g id="chart-legend" font-size="12"><rect x="{left}" y="6" width="12" '
             'height="12" fill="#3b6fd8"/>'
             f'<text x="{left + 17}" y="16">succeeded</text>'
             f'<rect x="{left + 100}" y="6" width="12" height="12" fill="#d8453b"/>'
             f'<text x="{left + 117}" y="16">failed or denied</text>'
             f'<text x="{width - right}" y="16" text-anchor="end" fill="#556">'
             f'events per {_e(act.get("bucket"))}; no bar: no events</text></g>',
             f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" '
             'stroke="#889"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#889"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{peak}'
             '</text>',
             f'<text x="{left - 6}" y="{base}" text-anchor="end" font-size="11">0</text>']
    for slot, b in zip(slots, buckets):
        ok_n = b["events"] - b["failed"]
        x = left + slot * bw
        h_ok = plot_h * ok_n / peak
        h_bad = plot_h * b["failed"] / peak
        w = max(bw * 0.85, 1)
        tip = _e(f'{b["start"]}: {b["events"]} events, {b["failed"]} failed')
        parts.append(f'<g class="bar" data-start="{_e(b["start"])}"><title>{tip}</title>'
                     f'<rect x="{x:.1f}" y="{base - h_ok:.1f}" width="{w:.1f}" '
                     f'height="{h_ok:.1f}" fill="#3b6fd8"/>')
        if b["failed"]:
            parts.append(f'<rect x="{x:.1f}" y="{base - h_ok - h_bad:.1f}" '
                         f'width="{w:.1f}" height="{h_bad:.1f}" fill="#d8453b"/>')
        parts.append("</g>")
    # Ticks at bucket boundaries, at most 6, the first at the axis start and the last at
    # its end (so one bucket still has two different labels: its start and its end).
    ticks = 1 + min(n, 5)
    parts.append('<g id="chart-ticks" font-size="11" fill="#334">')
    for k in range(ticks):
        slot = round(k * n / (ticks - 1))
        x = left + slot * bw
        anchor = "start" if k == 0 else ("end" if k == ticks - 1 else "middle")
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" '
                     f'stroke="#889"/><text class="tick" x="{x:.1f}" y="{base + 17}" '
                     f'text-anchor="{anchor}">{_e(_axis_label(t0 + slot * step, secs))}'
                     '</text>')
    parts.append(f'</g><text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="11" '
                 f'text-anchor="middle" fill="#556">time (UTC), one slot per '
                 f'{_e(act.get("bucket"))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _kv_table(rows: Iterable[tuple[str, Any]], cls: str = "") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def render_html(d: dict) -> str:
    """The report page for the data of :func:`compliance_report` (self-contained)."""
    s = d["summary"]
    v = d["verification"]
    cards = [("Events", s["events"]), ("Failed", s["failed"]),
             ("Chain verified", "yes" if s["verified"] else "NO"),
             ("Encrypted", "yes" if s["encrypted"] else "no"),
             ("Findings", f'{s["findings"]} ({s["findings_high"]} high)'),
             ("Preset gaps", s["preset_gaps"] if d["preset"] else "-")]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_e(d['title'])}</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>{_e(d['title'])}</h1>",
           f'<p class="muted">Generated {_e(d["generated"])} for <code>{_e(d["database"])}'
           f'</code>, audit table <code>{_e(d["table"])}</code>, database id '
           f'<code>{_e(d["database_id"])}</code>. Config <b>{_e(d["config"]["name"])}</b>'
           + (f', checked against preset <b>{_e(d["preset"])}</b>' if d["preset"] else "")
           + (f'; period {_e(d["period"]["since"] or "start")} to '
              f'{_e(d["period"]["until"] or "now")}' if any(d["period"].values()) else "")
           + ".</p>",
           '<div class="cards" id="summary">' + "".join(
               f'<div class="card"><span class="muted">{_e(k)}</span><b>{_e(val)}</b></div>'
               for k, val in cards) + "</div>"]

    out.append('<section id="verification"><h2>Verification</h2>')
    out.append(_kv_table([
        ("Result", _yes(v["ok"]) + (f' &mdash; fault <b>{_e(v["fault"])}</b> at event '
                                    f'{_e(v["first_bad_id"])}' if not v["ok"] else "")),
        ("Message", _e(v["message"])), ("Events checked", _e(v["events_checked"])),
        ("Against a signed checkpoint", _yes(v["with_checkpoint"])),
        ("Head", f'event {_e(d["head"]["last_id"])} at {_e(d["head"]["last_time"])}, '
                 f'<code>{_e(d["head"]["last_checksum"])}</code>'),
    ]))
    cp = d["checkpoint"]
    out.append('</section><section id="checkpoint"><h2>Latest checkpoint</h2>')
    if cp.get("seq") is not None:
        out.append(_kv_table([(k, _e(cp[k])) for k in ("seq", "event_id", "created",
                                                       "algorithm", "key_id", "verified")
                              if k in cp] + [("checkpoints taken", _e(cp["taken"]))]))
    else:
        out.append(f'<p>{_e(cp["taken"])} checkpoint(s) taken; none was provided to this '
                   "report, so the log was not verified against a signed head (a truncated "
                   "tail would go unnoticed).</p>")

    out.append('</section><section id="activity"><h2>Activity over time</h2>')
    out.append(f'<p class="muted">Events per {_e(d["activity"]["bucket"])}; failed and '
               "denied in red.</p>" if d["activity"]["bucket"] else "")
    out.append(_svg_chart(d["activity"]))

    out.append('</section><section id="coverage"><h2>Coverage by operation</h2>')
    rows = "".join(
        f'<tr><td>{_e(c["operation"])}</td><td>{_e(c["category"])}</td>'
        f'<td class="num">{c["events"]}</td><td class="num">{c["failed"]}</td>'
        f'<td class="num">{c["users"]}</td><td class="ts">{_e(c["first"])}</td>'
        f'<td class="ts">{_e(c["last"])}</td></tr>' for c in d["coverage"])
    out.append('<table id="coverage-table"><tr><th>Operation</th><th>Category</th>'
               "<th>Events</th><th>Failed</th><th>Users</th><th>First</th><th>Last</th></tr>"
               + rows + "</table>")
    out.append('<table><tr><th>Category</th><th>Configured</th><th>Observed</th></tr>' +
               "".join(f'<tr><td>{_e(c["category"])}</td><td>{_yes(c["configured"])}</td>'
                       f'<td>{_yes(c["observed"])}</td></tr>' for c in d["categories"])
               + "</table>")

    out.append('</section><section id="findings"><h2>Findings</h2>')
    if d["findings"]:
        out.append('<table id="findings-table"><tr><th>Severity</th><th>Kind</th>'
                   "<th>What</th><th>When</th><th>Events</th></tr>" + "".join(
                       f'<tr class="sev-{_e(f["severity"])}"><td>{_e(f["severity"])}</td>'
                       f'<td>{_e(f["kind"])}</td><td>{_e(f["message"])}</td>'
                       f'<td class="ts">{_e(f["first_time"])}</td><td>'
                       f'{_e(", ".join(map(str, f["event_ids"][:50])))}'
                       f'{" ..." if len(f["event_ids"]) > 50 else ""}</td></tr>'
                       for f in d["findings"]) + "</table>")
    else:
        out.append("<p>No suspicious activity found.</p>")

    if d["preset"]:
        out.append(f'</section><section id="preset"><h2>Config against preset '
                   f'{_e(d["preset"])}</h2>')
        out.append('<table id="preset-table"><tr><th>Requirement</th><th>Required</th>'
                   "<th>In force</th><th>Met</th></tr>" + "".join(
                       f'<tr><td>{_e(c["key"])}</td><td>{_e(c["required"])}</td>'
                       f'<td>{_e(c["actual"])}</td><td>{_yes(c["ok"])}</td></tr>'
                       for c in d["preset_check"]) + "</table>")

    out.append('</section><section id="encryption"><h2>Encryption</h2>')
    enc = d["encryption"]
    out.append(_kv_table([(k, _e(json.dumps(val, default=str) if isinstance(val, (list, dict))
                              else val)) for k, val in enc.items()]))

    r = d["retention"]
    out.append('</section><section id="retention"><h2>Retention and legal holds</h2>')
    out.append(_kv_table([
        ("Retention (database + archive)", _e(f'{r["retention_days"]} days ('
                                              f'{r["active_days"]} + {r["archive_days"]})')),
        ("Overrides", _e(r["retention_overrides"] or "none")),
        ("Oldest stored event", _e(f'{r["oldest_id"]} at {r["oldest_time"]}')),
        ("Anchor (last purged event)", _e(r["anchor_id"])),
        ("Purgeable now", _e(r["purgeable_now"])),
        ("Last purge", _e(json.dumps(r["last_purge"]) if r["last_purge"] else "never")),
        ("Legal holds", _e("; ".join(f'{h.get("id")}: {h.get("reason")}'
                                     for h in r["legal_holds"]) or "none")),
    ]))

    out.append('</section><section id="config"><h2>Config in force</h2>')
    cfg_rows = [(k, _e(val)) for k, val in _flatten(d["config"])
                if k.startswith(("name", "source", "audit.", "encryption."))]
    out.append(_kv_table(cfg_rows, "config"))
    out.append('</section><p class="muted">The same data is in the JSON file next to this '
               "page.</p>")
    out.append("</body></html>")
    return "\n".join(out)

