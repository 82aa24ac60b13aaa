"""``conn.audit.query()``: a small immutable builder over the audit table.

Every method returns a *new* query, so a base query can be shared and refined::

    q = conn.audit.query().user("alice").between("2026-01-01", "2026-02-01")
    q.operation("DELETE").success(False).count()
    for ev in q.table("patients").order("desc").limit(50):
        print(ev.timestamp, ev.operation, ev.target)

Filters map onto the indexes of the audit table (:func:`heliosdb.audit.store.index_sql`:
user and target each followed by ``id``, then the other filter columns, and ``(operation,
id)`` for the operations that are not :data:`~heliosdb.audit.store.BULK_OPERATIONS`), so a
filtered query reads the matching index range only, and checks a second filter inside
the first one's index. A bulk operation alone (INSERT, UPDATE...) is a large share of the
log, read in id order (or within a time window's id range). Time needs no index:
``ts_us`` grows with ``id`` (the writer makes it so), so a time range is translated into
an id range by a binary search on the primary key (about twenty row lookups on a million
events) and read as such. Logs created with an earlier layout (three covering indexes,
or the legacy ``(column, ts_us)`` ones) are served by theirs, with the same results.
Results are typed :class:`heliosdb.audit.events.AuditEvent` rows in time order
(``order("desc")`` reverses it).

Times (``between``, ``timeline(since=)`` ...) accept a :class:`datetime.datetime` (naive means
UTC), a :class:`datetime.date` (its UTC midnight), ISO 8601 text, or an integer of UTC
microseconds since the epoch (the stored ``ts_us``).
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Iterator, Optional, Sequence

import apsw

from ..errors import ProgrammingError, translate
from .events import COLUMNS, AuditEvent
from .store import BULK_OPERATIONS, RARE_OPERATION_TERM, index_layout, quoted

__all__ = ["AuditQuery", "to_us"]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_COLS = ", ".join(f'"{c}"' for c in COLUMNS)


def to_us(value: Any, what: str = "time") -> int:
    """UTC microseconds since the epoch for a datetime, date, ISO text or integer."""
    if isinstance(value, bool):
        raise ProgrammingError(f"{what}: expected a datetime, ISO text or microseconds, "
                               f"got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ProgrammingError(f"{what}: {value!r} is not an ISO 8601 date/time") from None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, _dt.date):
        return to_us(_dt.datetime(value.year, value.month, value.day), what)
    raise ProgrammingError(f"{what}: expected a datetime, date, ISO text or integer "
                           f"microseconds, got {type(value).__name__}")


def _strs(values: Sequence[Any], what: str) -> tuple[str, ...]:
    out = []
    for v in values:
        if isinstance(v, (list, tuple, set, frozenset)):
            out.extend(_strs(tuple(v), what))
        elif isinstance(v, str):
            out.append(v)
        else:
            raise ProgrammingError(f"{what}: expected text, got {type(v).__name__}")
    if not out:
        raise ProgrammingError(f"{what}: give at least one value")
    return tuple(out)


class AuditQuery:
    """A filter over the audit log. Build it with ``conn.audit.query()``.

    Filters combine with AND; a filter given several values (``operation("INSERT",
    "UPDATE")``) matches any of them. Calling the same filter again replaces it.
    """

    __slots__ = ("_session", "_f")

    def __init__(self, session: Any, filters: Optional[dict] = None) -> None:
        self._session = session
        self._f: dict[str, Any] = dict(filters or {})

    def _with(self, **kw: Any) -> "AuditQuery":
        f = dict(self._f)
        f.update(kw)
        return AuditQuery(self._session, f)

    # -- filters ---------------------------------------------------------------------
    def operation(self, *operations: str) -> "AuditQuery":
        """Events of these operations (``"INSERT"``, ``"DATA_SUBJECT_REQUEST"`` ...)."""
        return self._with(operation=tuple(o.upper() for o in _strs(operations, "operation")))

    def user(self, *users: str) -> "AuditQuery":
        """Events made by these session users."""
        return self._with(user=_strs(users, "user"))

    def table(self, *tables: str) -> "AuditQuery":
        """Events whose target includes one of these tables.

        A statement touching several tables (a join, a trigger) has a target such as
        ``"orders,customers"``; it matches each of them. Names are compared as stored
        (the spelling of the schema).
        """
        return self._with(table=_strs(tables, "table"))

    def success(self, ok: bool = True) -> "AuditQuery":
        """Only successful (``True``) or only failed and denied (``False``) events."""
        return self._with(success=1 if ok else 0)

    def between(self, start: Any = None, end: Any = None) -> "AuditQuery":
        """Events with ``start <= time < end`` (either bound may be None)."""
        lo = None if start is None else to_us(start, "between(start)")
        hi = None if end is None else to_us(end, "between(end)")
        return self._with(ts_lo=lo, ts_hi=hi)

    def since(self, start: Any) -> "AuditQuery":
        """Events at or after ``start``."""
        return self._with(ts_lo=None if start is None else to_us(start, "since"))

    def until(self, end: Any) -> "AuditQuery":
        """Events before ``end``."""
        return self._with(ts_hi=None if end is None else to_us(end, "until"))

    def session(self, *session_ids: str) -> "AuditQuery":
        """Events of these session ids (``conn.audit.session_id`` of a connection)."""
        return self._with(session=_strs(session_ids, "session"))

    def ids(self, first: Optional[int] = None, last: Optional[int] = None) -> "AuditQuery":
        """Events with ``first <= id <= last``."""
        return self._with(id_lo=first, id_hi=last)

    def after_id(self, event_id: int) -> "AuditQuery":
        """Events after ``event_id`` (incremental reads)."""
        return self._with(id_lo=int(event_id) + 1)

    def limit(self, n: Optional[int]) -> "AuditQuery":
        """At most ``n`` events (None: no limit)."""
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ProgrammingError(f"limit: expected a non-negative integer, got {n!r}")
        return self._with(limit=n)

    def offset(self, n: int) -> "AuditQuery":
        """Skip the first ``n`` matching events."""
        if not isinstance(n, int) or n < 0:
            raise ProgrammingError(f"offset: expected a non-negative integer, got {n!r}")
        return self._with(offset=n)

    def order(self, direction: str = "asc") -> "AuditQuery":
        """``"asc"`` (oldest first, the default) or ``"desc"`` (newest first)."""
        d = str(direction).lower()
        if d not in ("asc", "desc"):
            raise ProgrammingError(f"order: expected 'asc' or 'desc', got {direction!r}")
        return self._with(order=d)

    # -- SQL ---------------------------------------------------------------------------
    def _layout(self) -> str:
        """The log's index layout (:func:`heliosdb.audit.store.index_layout`)."""
        s = self._session
        with s._internal():
            return index_layout(s._db, s.table)

    def _where(self, layout: Optional[str] = None) -> tuple[str, list]:
        """The WHERE clause of this query and its parameters, for the log's index
        ``layout`` (read from the file when not given)."""
        f = self._f
        if layout is None and f.get("operation"):
            layout = self._layout()
        terms: list[str] = []
        args: list[Any] = []

        def any_of(col: str, values: tuple) -> None:
            if len(values) == 1:
                terms.append(f"{col} = ?")
            else:
                terms.append(f"{col} IN ({', '.join('?' * len(values))})")
            args.extend(values)

        if f.get("operation"):
            # An operation is one of a few dozen values, each a large share of the log; a
            # user or a target is usually far narrower. With one of those also given, keep
            # the planner (which has no statistics) off the operation index (unary +): the
            # user's or target's index reads fewer entries and checks the operation in-index.
            narrower = f.get("user") or f.get("table")
            if not narrower and layout == "current" \
                    and not set(f["operation"]) & set(BULK_OPERATIONS):
                # the operation index is partial: SQLite reads it only for a query that
                # holds its WHERE term as written (the values asked for imply it)
                terms.append(RARE_OPERATION_TERM)
            any_of("+operation" if narrower else "operation", f["operation"])
        if f.get("user"):
            any_of('"user"', f["user"])
        if f.get("session"):
            any_of("session_id", f["session"])
        if f.get("table"):
            values = self._target_values(f["table"])
            if values:
                any_of("target", tuple(values))
            else:
                terms.append("0")
        if f.get("success") is not None:
            terms.append("success = ?")
            args.append(f["success"])
        # A time bound becomes an id bound as well (ts_us grows with id), which the rowid
        # and every index (its entries end with the id) can seek; the ts_us term stays so
        # that no event outside the range is ever returned, whatever the file holds.
        if f.get("ts_lo") is not None:
            terms.append("ts_us >= ?")
            args.append(f["ts_lo"])
            terms.append("id >= ?")
            args.append(self._first_id_at(f["ts_lo"]))
        if f.get("ts_hi") is not None:
            terms.append("ts_us < ?")
            args.append(f["ts_hi"])
            terms.append("id < ?")
            args.append(self._first_id_at(f["ts_hi"]))
        if f.get("id_lo") is not None:
            terms.append("id >= ?")
            args.append(int(f["id_lo"]))
        if f.get("id_hi") is not None:
            terms.append("id <= ?")
            args.append(int(f["id_hi"]))
        return (" WHERE " + " AND ".join(terms)) if terms else "", args

    def _first_id_at(self, ts_us: int) -> int:
        """The smallest id whose ``ts_us >= ts_us`` (one past the last id if none).

        Binary search on the primary key: ``ts_us`` is strictly increasing with ``id``.
        Each probe reads the first stored row at or after an id, so a gap in the ids
        (a purge's start, a foreign file) costs nothing more.
        """
        t = quoted(self._session.table)
        # (two subqueries: SQLite answers a lone min() or max() from the b-tree's end,
        # "SELECT min(id), max(id)" with a scan)
        bounds = list(self._run(f"SELECT (SELECT min(id) FROM {t}), (SELECT max(id) FROM {t})",
                                []))
        lo, hi = bounds[0] if bounds else (None, None)
        if lo is None:
            return 0
        found = hi + 1
        probe = f"SELECT id, ts_us FROM {t} WHERE id >= ? ORDER BY id LIMIT 1"
        hi += 1
        while lo < hi:
            mid = (lo + hi) // 2
            row = next(iter(self._run(probe, [mid])), None)
            if row is None:  # no row in [mid, hi): the answer, if any, is below mid
                hi = mid
            elif not isinstance(row[1], int) or row[1] >= ts_us:
                # (a non-integer time cannot be ordered: keep it inside the range, the
                # ts_us term then decides)
                found, hi = row[0], mid
            else:
                lo = row[0] + 1
        return found

    def _target_values(self, tables: tuple[str, ...]) -> list[str]:
        """The stored ``target`` values that name one of ``tables``.

        A target lists every table a statement touched (``"orders,customers"``), so a
        table can sit anywhere in it. Rather than scan the log with a pattern, the distinct
        targets are enumerated by seeking the ``target`` index once per distinct
        value (a loose index scan: a few microseconds each, and a log has few distinct
        targets); the query then reads the matching index ranges only.
        """
        t = quoted(self._session.table)
        sql = (f"WITH RECURSIVE d(v) AS (SELECT min(target) FROM {t} UNION ALL "
               f"SELECT (SELECT min(target) FROM {t} WHERE target > d.v) FROM d "
               "WHERE d.v IS NOT NULL) SELECT v FROM d WHERE v IS NOT NULL")
        want = set(tables)
        out = []
        for (v,) in self._run(sql, []):
            if v in want or (isinstance(v, str) and "," in v and want & set(v.split(","))):
                out.append(v)
        return out

    def sql(self) -> tuple[str, list]:
        """The SELECT this query runs, and its parameters (for EXPLAIN, or a cursor)."""
        layout = self._layout()
        where, args = self._where(layout)
        d = "DESC" if self._f.get("order") == "desc" else "ASC"
        # ts_us is strictly increasing with id, so time order is id order. Ordering by the
        # column the indexes end with lets them deliver rows in order (no sort): id for
        # the current and covering layouts, ts_us for the legacy (column, ts_us) indexes.
        key = "ts_us" if layout == "legacy" else "id"
        sql = f"SELECT {_COLS} FROM {quoted(self._session.table)}{where} ORDER BY {key} {d}"
        lim, off = self._f.get("limit"), self._f.get("offset")
        if lim is not None or off:
            sql += " LIMIT ? OFFSET ?"
            args = args + [-1 if lim is None else lim, off or 0]
        return sql, args

    # -- results -------------------------------------------------------------------------
    def _run(self, sql: str, args: list) -> Iterator[tuple]:
        s = self._session
        if s.shared_by_threads:
            yield from self._run_shared(sql, args)
            return
        s._flush_for_read()
        try:
            with s._internal():
                cur = s._db.execute(sql, args)
            for row in cur:
                yield row
        except apsw.Error as exc:
            raise translate(exc) from None

    def _run_shared(self, sql: str, args: list) -> Iterator[tuple]:
        """:meth:`_run` on a connection threads share: each step holds the connection's
        lock (heliosdb.shared_connection), released between the rows it yields."""
        s = self._session
        lock = s._lock
        try:
            with lock:
                s._flush_for_read()
                with s._internal():
                    cur = s._db.execute(sql, args)
            while True:
                with lock:
                    row = next(cur, None)
                if row is None:
                    return
                yield row
        except apsw.Error as exc:
            raise translate(exc) from None

    def __iter__(self) -> Iterator[AuditEvent]:
        sql, args = self.sql()
        for row in self._run(sql, args):
            yield AuditEvent.from_row(row)

    def all(self) -> list[AuditEvent]:
        """The matching events as a list."""
        return list(self)

    def first(self) -> Optional[AuditEvent]:
        """The first matching event, or None."""
        for ev in self.limit(1) if self._f.get("limit") is None else self:
            return ev
        return None

    def ids_only(self) -> list[int]:
        """The ids of the matching events (cheaper than whole events)."""
        sql, args = self.sql()
        sql = sql.replace(f"SELECT {_COLS} ", "SELECT id ", 1)
        return [r[0] for r in self._run(sql, args)]

    def count(self) -> int:
        """How many events match (``limit``/``offset`` applied)."""
        where, args = self._where(self._layout())
        t = quoted(self._session.table)
        lim, off = self._f.get("limit"), self._f.get("offset")
        if lim is None and not off:
            sql = f"SELECT count(*) FROM {t}{where}"
        else:
            sql = (f"SELECT count(*) FROM (SELECT 1 FROM {t}{where} LIMIT ? OFFSET ?)")
            args = args + [-1 if lim is None else lim, off or 0]
        for (n,) in self._run(sql, args):
            return int(n)
        return 0

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._f.items() if v is not None)
        return f"<AuditQuery {shown or 'all events'}>"
