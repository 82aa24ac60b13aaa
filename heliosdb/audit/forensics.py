"""Forensics over the audit log: timelines and suspicious activity.

:func:`suspicious` looks for:

``mass_delete`` (high)
    A DELETE that removed at least ``mass_delete_threshold`` rows (default 100), or a
    user's DELETEs adding up to that many within ``burst_window`` seconds.
``unbounded_write`` (high)
    A successful DELETE or UPDATE without a top-level WHERE clause, or with a trivially
    true one (``WHERE 1``, ``WHERE 1=1``, ``WHERE true``).
``drop_table`` (high)
    A successful DROP TABLE.
``audit_tamper`` (high)
    A denied statement aimed at the audit log itself (UPDATE, DELETE, DROP ...).
``failure_burst`` / ``denied_burst`` (medium)
    At least ``burst_threshold`` failed (resp. denied) statements by one user within
    ``burst_window`` seconds (default 5 in 60 s).
``after_hours`` (low)
    Activity inside the after-hours window (``[audit.after_hours]``: local start/end, IANA
    time zone, weekends), one finding per user and local day.
``sensitive_read`` (low)
    SELECTs of a table listed in ``audit.sensitive_tables``, one finding per user and table.

Every finding names the ids of the events it rests on (``event_ids``).
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from ..config import AfterHours
from ..errors import ProgrammingError
from .events import AuditEvent, format_ts
from .query import AuditQuery, to_us

__all__ = ["Finding", "timeline", "suspicious", "has_where", "KINDS"]

KINDS = ("mass_delete", "unbounded_write", "drop_table", "audit_tamper", "failure_burst",
         "denied_burst", "after_hours", "sensitive_read", "change_without_reason")
_SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}
_MAX_IDS = 10_000  # a finding lists at most this many ids (and says how many in all)


@dataclass(frozen=True)
class Finding:
    """One suspicious pattern and the events it rests on."""

    kind: str
    severity: str
    message: str
    event_ids: tuple[int, ...]
    user: Optional[str] = None
    target: Optional[str] = None
    first_ts_us: Optional[int] = None
    last_ts_us: Optional[int] = None
    details: dict = field(default_factory=dict)

    @property
    def first_time(self) -> Optional[str]:
        return format_ts(self.first_ts_us) if self.first_ts_us is not None else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["event_ids"] = list(self.event_ids)
        d["first_time"] = self.first_time
        d["last_time"] = format_ts(self.last_ts_us) if self.last_ts_us is not None else None
        return d


def timeline(audit: Any, *, user: Any = None, table: Any = None, since: Any = None,
             until: Any = None, session: Any = None, operation: Any = None,
             limit: Optional[int] = None) -> list[AuditEvent]:
    """The events of ``user`` and/or ``table`` (each a name or a list) from ``since`` to
    ``until``, oldest first; ``session`` and ``operation`` narrow it further."""
    sid = session
    q: AuditQuery = audit.query()
    if user is not None:
        q = q.user(*([user] if isinstance(user, str) else user))
    if table is not None:
        q = q.table(*([table] if isinstance(table, str) else table))
    if operation is not None:
        q = q.operation(*([operation] if isinstance(operation, str) else operation))
    if sid is not None:
        q = q.session(*([sid] if isinstance(sid, str) else sid))
    if since is not None or until is not None:
        q = q.between(since, until)
    if limit is not None:
        q = q.limit(limit)
    return q.all()


# --- WHERE detection ------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<lc>--[^\n]*)
  | (?P<bc>/\*.*?(?:\*/|\Z))
  | (?P<str>'(?:[^']|'')*'?)
  | (?P<qid>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<num>\d+(?:\.\d*)?)
  | (?P<op>.)
""", re.VERBOSE | re.DOTALL)
_TRUE_WHERE = ({"1"}, {"TRUE"}, {"1", "=", "1"}, {"'1'", "=", "'1'"}, {"1", "<>", "0"},
               {"NOT", "0"}, {"NOT", "FALSE"})


def _tokens(sql: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind in ("ws", "lc", "bc"):
            continue
        text = m.group()
        out.append((kind, text.upper() if kind == "word" else text))
    return out


def has_where(sql: Optional[str]) -> Optional[bool]:
    """Whether a DELETE/UPDATE statement restricts its rows.

    True: a top-level WHERE with a real condition; False: no top-level WHERE, or a
    trivially true one; None: nothing to judge (no text, or no DELETE/UPDATE in it).
    Subqueries, CTEs, strings, quoted names and comments are skipped, so
    ``UPDATE t SET a = (SELECT b FROM c WHERE ...)`` has no WHERE of its own.
    """
    if not sql:
        return None
    hit = _WHERE_CACHE.get(sql)
    if hit is not None or sql in _WHERE_CACHE:
        return hit
    result = _has_where(sql)
    if len(_WHERE_CACHE) > 4096:
        _WHERE_CACHE.clear()
    _WHERE_CACHE[sql] = result
    return result


_WHERE_CACHE: dict[str, Optional[bool]] = {}


def _has_where(sql: str) -> Optional[bool]:
    toks = _tokens(sql)
    depth = 0
    seen_verb = False
    for i, (kind, t) in enumerate(toks):
        if kind == "op":
            if t == "(":
                depth += 1
            elif t == ")":
                depth = max(0, depth - 1)
            elif t == ";" and seen_verb and depth == 0:
                break
            continue
        if depth:
            continue
        if kind == "word" and t in ("DELETE", "UPDATE"):
            seen_verb = True
        elif kind == "word" and t == "WHERE" and seen_verb:
            cond = []
            for k2, t2 in toks[i + 1:]:
                if (k2 == "word" and t2 in ("RETURNING", "ORDER", "LIMIT")) or t2 == ";":
                    break
                cond.append(t2)
            if set(cond) in _TRUE_WHERE and len(cond) <= 3:
                return False
            return True
    return False if seen_verb else None


# --- suspicious -----------------------------------------------------------------------------

def _md(ev_md: Optional[str]) -> dict:
    if not ev_md:
        return {}
    try:
        v = json.loads(ev_md)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _is_denied(md_text: Optional[str], error: Optional[str]) -> bool:
    if error and error.startswith("not authorized"):
        return True
    d = _md(md_text).get("details")
    return bool(isinstance(d, dict) and d.get("denied"))


def _targets(target: Optional[str]) -> list[str]:
    return [t for t in (target or "").split(",") if t]


def _ids(ids: list[int]) -> tuple[int, ...]:
    return tuple(ids[:_MAX_IDS])


def _after_hours(value: Any, default: AfterHours) -> Optional[AfterHours]:
    if value is False:
        return None
    if value is None or value is True:
        return default
    if isinstance(value, AfterHours):
        return value
    if isinstance(value, dict):
        from ..config import load_config
        # Validated like a config file (bad hours or an unknown time zone raise ConfigError).
        return load_config({"audit": {"after_hours": dict(value)}}).audit.after_hours
    raise ProgrammingError("after_hours: expected an AfterHours, a dict of start/end/"
                           "timezone/weekends, True (the config's) or False (off)")


def suspicious(audit: Any, *, since: Any = None, until: Any = None,
               mass_delete_threshold: int = 100, burst_threshold: int = 5,
               burst_window: float = 60.0, after_hours: Any = None,
               sensitive_tables: Optional[Iterable[str]] = None,
               kinds: Optional[Iterable[str]] = None,
               exclude_users: Iterable[str] = ()) -> list[Finding]:
    """Scan the log (optionally ``since``..``until``) for suspicious activity.

    ``after_hours``: None/True for ``[audit.after_hours]``, an AfterHours or a dict
    (``{"start": "20:00", "end": "06:00", "timezone": "Europe/Paris", "weekends": True}``),
    or False to skip. ``sensitive_tables`` defaults to ``audit.sensitive_tables``.
    ``kinds`` limits the checks to some of :data:`KINDS`. Findings are sorted by
    severity, then time.
    """
    session = audit
    cfg = session._cfg
    want = set(KINDS if kinds is None else kinds)
    unknown = want - set(KINDS)
    if unknown:
        raise ProgrammingError(f"suspicious(): unknown kind(s) {sorted(unknown)}; "
                               f"known: {', '.join(KINDS)}")
    if mass_delete_threshold < 1 or burst_threshold < 1 or burst_window <= 0:
        raise ProgrammingError("suspicious(): thresholds must be positive")
    ah = _after_hours(after_hours, cfg.after_hours) if "after_hours" in want else None
    sensitive = {t.lower() for t in (cfg.sensitive_tables if sensitive_tables is None
                                     else sensitive_tables)}
    excluded = set(exclude_users)
    audit_tables = {session.table.lower(), "__audit_meta"}
    window_us = int(burst_window * 1_000_000)
    lo = None if since is None else to_us(since, "since")
    hi = None if until is None else to_us(until, "until")

    findings: list[Finding] = []
    # Per-user sliding windows for bursts: deque of (ts, id).
    fails: dict[Any, deque] = defaultdict(deque)
    denies: dict[Any, deque] = defaultdict(deque)
    deletes: dict[Any, deque] = defaultdict(deque)  # (ts, id, rows)
    open_bursts: dict[tuple, dict] = {}
    night: dict[tuple, list] = {}
    reads: dict[tuple, list] = {}

    def burst(kind: str, user: Any, win: deque, ts: int, eid: int, threshold: int,
              weight: int = 1) -> None:
        win.append((ts, eid, weight))
        while win and win[0][0] <= ts - window_us:
            win.popleft()
        total = sum(w for _t, _i, w in win)
        key = (kind, user)
        cur = open_bursts.get(key)
        if cur is not None and ts - cur["last"] > window_us:
            _close(key)
            cur = None
        if cur is not None:
            cur["ids"].append(eid)
            cur["last"] = ts
            cur["total"] += weight
        elif total >= threshold:
            open_bursts[key] = {"ids": [i for _t, i, _w in win], "first": win[0][0],
                                "last": ts, "total": total}

    def _close(key: tuple) -> None:
        b = open_bursts.pop(key)
        kind, user = key
        n = len(b["ids"])
        secs = (b["last"] - b["first"]) / 1e6
        if kind == "mass_delete":
            msg = (f"{user} deleted {b['total']} rows in {n} statements within {secs:.1f} s "
                   f"(threshold {mass_delete_threshold})")
            sev = "high"
        else:
            what = "denied" if kind == "denied_burst" else "failed"
            msg = (f"{n} {what} statements by {user} within {secs:.1f} s "
                   f"(threshold {burst_threshold} in {burst_window:g} s)")
            sev = "medium"
        findings.append(Finding(kind, sev, msg, _ids(b["ids"]), user=user,
                                first_ts_us=b["first"], last_ts_us=b["last"],
                                details={"count": n, "rows": b["total"]}
                                if kind == "mass_delete" else {"count": n}))

    q = session.query().between(lo, hi)
    cols = ("id", "ts_us", "user", "operation", "target", "query", "affected_rows",
            "success", "error", "metadata", "reason")
    # 21 CFR 11.10(e): under require_reason, a change (DDL, DML) must carry its reason.
    from ..config import category_of

    no_reason: dict[Any, list] = {}
    check_reason = cfg.require_reason and "change_without_reason" in want
    sql, args = q.sql()
    sql = sql.replace(sql[len("SELECT "):sql.index(" FROM ")],
                      ", ".join(f'"{c}"' for c in cols), 1)
    minute_cache: dict[int, Optional[str]] = {}
    if ah is not None:
        from ..config import time_zone
        zone = time_zone(ah.timezone)
    for row in q._run(sql, args):
        eid, ts, user, op, target, text, rows, ok, err, md, why = row
        if user in excluded:
            continue
        tl = [t.lower() for t in _targets(target)]
        if ok == 1:
            if check_reason and not why and category_of(op) in ("DDL", "DML"):
                no_reason.setdefault(user, []).append((eid, ts))
            if op == "DELETE" and "mass_delete" in want and isinstance(rows, int):
                if rows >= mass_delete_threshold:
                    findings.append(Finding(
                        "mass_delete", "high", f"{user} deleted {rows} rows from {target} in "
                        f"one statement (threshold {mass_delete_threshold})", (eid,),
                        user=user, target=target, first_ts_us=ts, last_ts_us=ts,
                        details={"rows": rows, "query": text}))
                elif rows > 0:
                    burst("mass_delete", user, deletes[user], ts, eid,
                          mass_delete_threshold, weight=rows)
            if op in ("DELETE", "UPDATE") and "unbounded_write" in want \
                    and has_where(text) is False:
                findings.append(Finding(
                    "unbounded_write", "high", f"{op} without WHERE on {target} by {user} "
                    f"({rows if rows is not None else '?'} rows)", (eid,), user=user,
                    target=target, first_ts_us=ts, last_ts_us=ts,
                    details={"query": text, "rows": rows}))
            if op == "DROP_TABLE" and "drop_table" in want:
                findings.append(Finding(
                    "drop_table", "high", f"{user} dropped table {target}", (eid,), user=user,
                    target=target, first_ts_us=ts, last_ts_us=ts, details={"query": text}))
            if op == "SELECT" and "sensitive_read" in want and sensitive:
                for t in tl:
                    if t in sensitive:
                        reads.setdefault((user, t), []).append((eid, ts))
        else:
            denied = _is_denied(md, err)
            if denied and "audit_tamper" in want and audit_tables & set(tl):
                findings.append(Finding(
                    "audit_tamper", "high", f"{user} tried to change the audit log: "
                    f"{op} on {target} was denied", (eid,), user=user, target=target,
                    first_ts_us=ts, last_ts_us=ts, details={"query": text, "error": err}))
            if denied and "denied_burst" in want:
                burst("denied_burst", user, denies[user], ts, eid, burst_threshold)
            if "failure_burst" in want and not denied:
                burst("failure_burst", user, fails[user], ts, eid, burst_threshold)
        if ah is not None and op not in ("RETENTION_PURGE",):
            # The window is set in whole minutes: one zone conversion per minute of log.
            minute = ts // 60_000_000
            day = minute_cache.get(minute, 0)
            if day == 0:
                when = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + \
                    _dt.timedelta(minutes=minute)
                day = (when.astimezone(zone).date().isoformat()
                       if ah.contains(when) else None)
                if len(minute_cache) > 200_000:
                    minute_cache.clear()
                minute_cache[minute] = day
            if day is not None:
                night.setdefault((user, day), []).append((eid, ts))
    for key in list(open_bursts):
        _close(key)
    if ah is not None:
        for (user, day), evs in night.items():
            ids = [i for i, _t in evs]
            findings.append(Finding(
                "after_hours", "low", f"{len(ids)} event(s) by {user} after hours on {day} "
                f"({ah.start}-{ah.end} {ah.timezone}"
                f"{', weekends' if ah.weekends else ''})", _ids(ids), user=user,
                first_ts_us=evs[0][1], last_ts_us=evs[-1][1],
                details={"count": len(ids), "local_date": day, "timezone": ah.timezone}))
    for user, evs in no_reason.items():
        ids = [i for i, _t in evs]
        findings.append(Finding(
            "change_without_reason", "high", f"{len(ids)} change(s) by {user} without a "
            "reason, which this audit policy requires (require_reason)", _ids(ids), user=user,
            first_ts_us=evs[0][1], last_ts_us=evs[-1][1], details={"count": len(ids)}))
    for (user, t), evs in reads.items():
        ids = [i for i, _t in evs]
        findings.append(Finding(
            "sensitive_read", "low", f"{user} read sensitive table {t} {len(ids)} time(s)",
            _ids(ids), user=user, target=t, first_ts_us=evs[0][1], last_ts_us=evs[-1][1],
            details={"count": len(ids)}))
    findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], f.first_ts_us or 0, f.kind))
    return findings
