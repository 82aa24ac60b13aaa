"""The audit table: schema, append (ids, time, chain) and head, on a raw ``apsw.Connection``.

The caller owns the transaction: :func:`append` reads the head of the chain *inside* the
caller's write transaction, so several connections and processes that append to one file
extend one linear chain (SQLite serialises writers; a head read outside the write
transaction could be stale). Called outside a transaction, :func:`append` wraps itself in
``BEGIN IMMEDIATE`` ... ``COMMIT``.

Nothing is cached between calls except SQL text: the head is re-read every time, which is
what makes a rolled-back append harmless (DESIGN.md 3a: an in-memory head is not
rollback-aware).
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import apsw

from ..errors import AuditIntegrityError, DataError, ProgrammingError, translate
from . import chain, merkle  # (merkle imports store only inside functions)
from .events import COLUMNS, GENESIS, NTEXT, AuditEvent, EventFields, canonical_json, check_operation
from .events import ACCEPTED_OPERATIONS as _known_ops

__all__ = ["DEFAULT_TABLE", "META_TABLE", "DEFAULT_MAX_QUERY_LENGTH", "Head", "Anchor",
           "ensure_schema", "append", "head", "read_head", "anchor", "read_events",
           "get_meta", "check_table_name", "quoted", "index_sql", "legacy_index_sql",
           "covering3_index_sql", "known_indexes", "has_legacy_indexes", "index_layout",
           "BULK_OPERATIONS", "RARE_OPERATION_TERM"]

DEFAULT_TABLE = "__audit_log"
#: One small table for every audit table of the database: (tbl, key) -> value.
META_TABLE = "__audit_meta"
DEFAULT_MAX_QUERY_LENGTH = 10000

#: What an audit table name may be (it is spliced into SQL): a plain identifier.
TABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class Head(NamedTuple):
    """The last event of the chain (or the anchor when the table is empty).

    ``count`` is the number of events since the anchor (``last_id - anchor_id``): ids are
    gapless, so this needs no table scan.
    """

    last_id: int
    last_checksum: bytes
    last_ts_us: Optional[int]
    count: int


class Anchor(NamedTuple):
    """Where the stored chain starts: the event before the first stored one.

    ``id`` 0 and the genesis checksum (32 zero bytes) for a log that was never purged; a
    retention purge moves it to the last purged event.
    """

    id: int
    checksum: bytes
    ts_us: Optional[int]


def check_table_name(table: str) -> str:
    """Return ``table`` if it is a plain identifier (it is spliced into SQL), else raise."""
    if not isinstance(table, str) or not TABLE_NAME_RE.match(table) \
            or table.lower() == META_TABLE.lower() or table.lower().startswith("sqlite_"):
        raise ProgrammingError(f"invalid audit table name {table!r}: use letters, digits and "
                               f"underscores, not {META_TABLE!r} or sqlite_*")
    return table


def quoted(table: str) -> str:
    """``table`` as a quoted SQL identifier, after :func:`check_table_name` (it is spliced
    into SQL text)."""
    return '"' + check_table_name(table) + '"'


#: The operations that make up the bulk of a log (one event per statement or transaction):
#: the operation index leaves them out, so that the events written by the thousand cost it
#: nothing (:func:`index_sql`). Changing this tuple changes the stored index SQL: never do
#: it without keeping the old text in :func:`known_indexes`.
BULK_OPERATIONS: tuple[str, ...] = ("INSERT", "UPDATE", "DELETE", "SELECT", "BEGIN",
                                    "COMMIT", "SAVEPOINT", "RELEASE")
#: The WHERE clause of the operation index, as :func:`index_sql` writes it. SQLite uses a
#: partial index only for a query whose WHERE clause holds these very terms, so
#: :mod:`heliosdb.audit.query` adds them, text for text, to a query by other operations.
#: A chain of ``<>``, not ``NOT IN (...)``: SQLite evaluates the WHERE of a partial index
#: for every row inserted, and codes an IN list of more than two values as a temporary
#: b-tree filled once per statement run, which ``executemany`` pays again for each row
#: (about 20,000 instructions per event, more than the index itself).
RARE_OPERATION_TERM = " AND ".join(f"operation <> '{op}'" for op in BULK_OPERATIONS)


def index_sql(table: str) -> list[str]:
    """The ``CREATE INDEX`` statements of a log created by this version, as SQLite stores
    them in ``sqlite_schema`` (docs/AUDIT_FORMAT.md, "Indexes").

    Every index is paid for by every event it holds, so the log has the fewest that keep
    its filtered queries in milliseconds:

    * ``("user", id, ...)`` and ``(target, id, ...)``: a user's or a target's entries in id
      (= time) order, so an id range within them is one seek and "the latest 50" reads 50
      entries; the other filter columns follow, so that a second filter (``operation``,
      ``success``...) is checked inside the index without reading the rows it rejects
      (carrying them costs an event about 2% more than ``(column, id)`` alone).
    * ``(operation, id)`` only for the operations that are not :data:`BULK_OPERATIONS`
      (logins, DDL, grants, key changes, application events...): those are what a query
      by operation alone looks for among a million statements; a bulk operation is a large
      share of the log, read in id order instead (or inside its user's or target's index).
      An INSERT, UPDATE, DELETE or SELECT event does not touch this index.

    Time needs no index: ``ts_us`` grows with ``id``, so a time range is an id range
    (:mod:`heliosdb.audit.query` finds it by binary search on the primary key).
    No partial index of failed events: its pages would be read by no successful write, so
    a damaged one would go unnoticed until a failure is recorded (tests/
    test_reliability_fuzz.py holds every page of a file to being read by ordinary use);
    the operation index is written by each connection's LOGIN and LOGOUT.
    """
    t = quoted(table)
    return [
        f'CREATE INDEX "{table}_by_user" ON {t}("user", id, operation, target, success)',
        f'CREATE INDEX "{table}_by_target" ON {t}(target, id, operation, "user", success)',
        f'CREATE INDEX "{table}_rare_operation" ON {t}(operation, id) '
        f'WHERE {RARE_OPERATION_TERM}',
    ]


def covering3_index_sql(table: str) -> list[str]:
    """The three covering indexes of logs created between the legacy layout and
    :func:`index_sql` (``by_user`` and ``by_target`` as today, and ``by_operation``
    holding every event), as stored.

    Files that have them keep them (no DDL runs on an audited log behind its owner's
    back); :mod:`heliosdb.audit.query` serves them as before.
    """
    t = quoted(table)
    return [
        f'CREATE INDEX "{table}_by_user" ON {t}("user", id, operation, target, success)',
        f'CREATE INDEX "{table}_by_operation" ON {t}(operation, id, "user", target, success)',
        f'CREATE INDEX "{table}_by_target" ON {t}(target, id, operation, "user", success)',
    ]


def legacy_index_sql(table: str) -> list[str]:
    """The six indexes of logs created before :func:`covering3_index_sql` (time, user,
    operation, target and session each with ``ts_us``, and the generated ``timestamp``),
    as stored.

    Files that have them keep them: opening a file runs no DDL on its log, and queries give
    the same results on either layout (docs/AUDIT_FORMAT.md, "Indexes").
    """
    t = quoted(table)
    return [
        f'CREATE INDEX "{table}_ts" ON {t}(ts_us)',
        f'CREATE INDEX "{table}_user" ON {t}("user", ts_us)',
        f'CREATE INDEX "{table}_operation" ON {t}(operation, ts_us)',
        f'CREATE INDEX "{table}_target" ON {t}(target, ts_us)',
        f'CREATE INDEX "{table}_session" ON {t}(session_id, ts_us)',
        f'CREATE INDEX "{table}_timestamp" ON {t}("timestamp")',
    ]


def known_indexes(table: str) -> dict[str, str]:
    """Every index HeliosDB creates or created on ``table``: lower-cased name -> its SQL
    as stored (anything else on the log is foreign: :mod:`heliosdb.audit.neighbourhood`).
    A name has one SQL in every layout that has it (``by_user`` and ``by_target`` are
    the same in :func:`covering3_index_sql` and :func:`index_sql`)."""
    out: dict[str, str] = {}
    for sql in legacy_index_sql(table) + covering3_index_sql(table) + index_sql(table):
        out[sql.split('"')[1].lower()] = sql
    return out


def index_layout(conn: apsw.Connection, table: str) -> str:
    """Which index layout the log in ``conn`` has: ``"legacy"`` (:func:`legacy_index_sql`:
    its ``(column, ts_us)`` indexes deliver rows in ``ts_us`` order), ``"covering3"``
    (:func:`covering3_index_sql`: an operation index of every event) or ``"current"``
    (:func:`index_sql`, also said of a log with none of them). One read of
    ``sqlite_schema``."""
    try:
        names = {r[0].lower() for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND name IN (?, ?)", (table, f"{table}_ts", f"{table}_by_operation"))}
    except apsw.Error as exc:
        raise translate(exc) from None
    if f"{table}_ts".lower() in names:
        return "legacy"
    if f"{table}_by_operation".lower() in names:
        return "covering3"
    return "current"


def has_legacy_indexes(conn: apsw.Connection, table: str) -> bool:
    """Whether the log in ``conn`` carries the time index of the legacy layout (then its
    ``(column, ts_us)`` indexes deliver rows in ``ts_us`` order, not id order)."""
    try:
        for _ in conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ? "
                              "AND tbl_name = ?", (f"{table}_ts", table)):
            return True
    except apsw.Error as exc:
        raise translate(exc) from None
    return False


def _table_exists(conn: apsw.Connection, table: str) -> bool:
    return any(conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (table,)))


def _schema_sql(table: str) -> list[str]:
    """The log's CREATE TABLE, then the meta table's (indexes: :func:`index_sql`)."""
    t = quoted(table)
    return [
        f"""CREATE TABLE IF NOT EXISTS {t} (
    id            INTEGER PRIMARY KEY,   -- gapless, assigned by the writer, never reused
    ts_us         INTEGER NOT NULL,      -- UTC microseconds, strictly increasing
    session_id    TEXT,
    "user"        TEXT,
    operation     TEXT NOT NULL,
    target        TEXT,
    query         TEXT,                  -- cut at max_query_length characters
    affected_rows INTEGER,
    success       INTEGER NOT NULL,      -- 1 or 0
    error         TEXT,
    metadata      TEXT,                  -- canonical JSON
    old_values    TEXT,                  -- canonical JSON or NULL
    new_values    TEXT,                  -- canonical JSON or NULL
    reason        TEXT,
    prev_hash     BLOB NOT NULL,         -- checksum of the previous event (32 bytes)
    checksum      BLOB NOT NULL,         -- SHA-256(prev_hash || encoding), 32 bytes
    {_GENERATED_SQL}
)""",
        f"""CREATE TABLE IF NOT EXISTS {META_TABLE} (
    tbl   TEXT NOT NULL,
    key   TEXT NOT NULL,
    value,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID""",
    ]


#: ``ts_us`` as SQLite's ``unixepoch`` modifier rounds it: milliseconds since the Julian
#: day epoch (``p->iJD = (i64)(ts_us / 1e6 * 1000.0 + 210866760000000.0 + 0.5)`` in
#: date.c), with the same floating-point steps, so that the text below is the one
#: ``strftime('%Y-%m-%d %H:%M:%f', ts_us / 1000000.0, 'unixepoch')`` gives, digit for digit.
_JD_MS = "CAST(ts_us / 1000000.0 * 1000.0 + 210866760000000.0 + 0.5 AS INTEGER)"
#: Columns computed by SQLite from the stored ones (VIRTUAL: nothing stored, nothing hashed),
#: so that the queries of the product documents run as written: ``timestamp`` is UTC
#: ``YYYY-MM-DD HH:MM:SS.SSS`` (what SQLite's date functions compare with, e.g.
#: ``timestamp >= datetime('now', '-30 days')``) and ``checksum_hex`` the 64 hex digits.
#:
#: SQLite computes every generated column of a row on every INSERT, VIRTUAL ones included,
#: so their cost is paid per event. ``timestamp`` is the ``strftime(..., 'unixepoch')`` text
#: built from whole seconds (``datetime`` of an integer) and the milliseconds of
#: :data:`_JD_MS`: about half the instructions of ``strftime`` with ``%f``, identical
#: text for every ``ts_us`` (tests/test_audit_indexes.py), and nothing newer than SQLite
#: 3.31 (``datetime(..., 'subsec')``, cheaper still, is 3.42: an older ``sqlite3`` shell
#: would read NULL). Logs created with the ``strftime`` form keep it (it is in their
#: stored CREATE TABLE); both give the same text.
GENERATED_COLUMNS: dict[str, str] = {
    "timestamp": f"datetime({_JD_MS} / 1000 - 210866760000, 'unixepoch') || '.' || "
                 f"substr({_JD_MS} % 1000 + 1000, 2)",
    "checksum_hex": "lower(hex(checksum))",
}
#: The ``timestamp`` expression of logs created before :data:`GENERATED_COLUMNS` took its
#: cheaper form (same text).
STRFTIME_TIMESTAMP = "strftime('%Y-%m-%d %H:%M:%f', ts_us / 1000000.0, 'unixepoch')"
_GENERATED_SQL = ",\n    ".join(
    f'"{name}" TEXT GENERATED ALWAYS AS ({expr}) VIRTUAL'
    for name, expr in GENERATED_COLUMNS.items())


def _add_generated_columns(conn: apsw.Connection, table: str) -> None:
    """Logs created before the generated columns existed get them (no rewrite: VIRTUAL
    columns are added by ALTER TABLE without touching a row)."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_xinfo({quoted(table)})")}
    for name, expr in GENERATED_COLUMNS.items():
        if name not in have:
            conn.execute(f'ALTER TABLE {quoted(table)} ADD COLUMN "{name}" TEXT '
                         f"GENERATED ALWAYS AS ({expr}) VIRTUAL")


def _run(conn: apsw.Connection, fn: Any, *args: Any, write: bool = True) -> Any:
    """Run ``fn`` inside the caller's transaction, or in one of our own.

    Our own is ``BEGIN IMMEDIATE`` for writes so that the head read and the insert cannot
    interleave with another process's append.
    """
    try:
        if conn.in_transaction:
            return fn(conn, *args)
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn, *args)
            # (inside the try: a COMMIT refused with SQLITE_BUSY leaves the transaction
            # open, and the caller's next statements would run in it unknowingly)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result
    except apsw.Error as exc:
        raise translate(exc) from None


def ensure_schema(conn: apsw.Connection, table: str = DEFAULT_TABLE, *,
                  meta: Optional[dict] = None) -> bool:
    """Create the audit table, its indexes and its meta rows if they do not exist; return
    whether it had to (a write transaction ran), False when the file held them already.

    The indexes (:func:`index_sql`) are created with the table, never added to a log that
    exists: a file made with the legacy indexes keeps them (no DDL runs on an audited file
    behind its owner's back; docs/AUDIT_FORMAT.md, "Indexes").

    Meta rows (table ``__audit_meta``, keyed by audit table name): ``format_version``,
    ``database_id`` (16 random bytes, hex: binds checkpoints to this database),
    ``anchor_id`` / ``anchor_checksum`` / ``anchor_ts_us`` (start of the stored chain) and
    ``checkpoint_seq`` (number of the last checkpoint taken of this database).

    ``meta``: every row of ``__audit_meta`` as :func:`heliosdb.audit.policy.read_meta`
    just read it (``{}``: no meta table), to answer whether the meta rows are there
    without a query. Whatever it says, the creation re-checks inside its transaction.
    """
    check_table_name(table)
    if _schema_complete(conn, table, meta):
        return False  # what every open of an existing log finds: no write transaction

    def work(c: apsw.Connection) -> None:
        schema = _schema_sql(table)
        new = not _table_exists(c, table)
        c.execute(schema[0])
        _add_generated_columns(c, table)
        for sql in schema[1:]:
            c.execute(sql)
        if new:
            for sql in index_sql(table):
                c.execute(sql)
        defaults = {"format_version": 1, "database_id": os.urandom(16).hex(),
                    "anchor_id": 0, "anchor_checksum": GENESIS, "anchor_ts_us": None,
                    "checkpoint_seq": 0}
        c.executemany(f"INSERT OR IGNORE INTO {META_TABLE}(tbl, key, value) VALUES (?, ?, ?)",
                      [(table, k, v) for k, v in defaults.items()])

    _run(conn, work)
    return True


_META_DEFAULT_KEYS = ("format_version", "database_id", "anchor_id", "anchor_checksum",
                      "anchor_ts_us", "checkpoint_seq")


def _schema_complete(conn: apsw.Connection, table: str, meta: Optional[dict] = None) -> bool:
    """Does the file already hold everything :func:`ensure_schema` would create for
    ``table`` (its meta rows, the table with its generated columns)? No lock; one query
    for the meta rows (none when ``meta``, every meta row already read, is given), and
    SQLite's schema asked for each generated column (``sqlite3_table_column_metadata``:
    no statement compiled; it finds the table where ``PRAGMA table_xinfo`` would, temp
    first, and hidden columns too)."""
    if meta is not None:
        n = sum(1 for k in _META_DEFAULT_KEYS if (table, k) in meta)
    else:
        try:
            n = conn.execute(
                f"SELECT count(*) FROM {META_TABLE} WHERE tbl = ? AND key IN "
                f"({', '.join('?' * len(_META_DEFAULT_KEYS))})",
                (table, *_META_DEFAULT_KEYS)).fetchall()[0][0]
        except apsw.SQLError:
            return False  # no meta table yet
    if n != len(_META_DEFAULT_KEYS):
        return False
    for name in GENERATED_COLUMNS:
        try:
            conn.column_metadata(None, table, name)
        except apsw.SQLError:
            return False  # no such table, or no such column
    return True


def get_meta(conn: apsw.Connection, table: str, key: str, default: Any = None) -> Any:
    """One meta value of an audit table (``default`` when absent)."""
    try:
        for (v,) in conn.execute(f"SELECT value FROM {META_TABLE} WHERE tbl = ? AND key = ?",
                                 (table, key)):
            return v
    except apsw.SQLError:
        return default  # no meta table: a log created by a foreign tool, or not yet
    except apsw.Error as exc:
        raise translate(exc) from None
    return default


def set_meta(conn: apsw.Connection, table: str, key: str, value: Any) -> None:
    """Set one meta value (inside the caller's transaction, or its own)."""
    _run(conn, lambda c: c.execute(
        f"INSERT OR REPLACE INTO {META_TABLE}(tbl, key, value) VALUES (?, ?, ?)",
        (table, key, value)))


def anchor(conn: apsw.Connection, table: str = DEFAULT_TABLE) -> Anchor:
    """Where the stored chain starts (genesis unless a retention purge moved it)."""
    aid = get_meta(conn, table, "anchor_id", 0)
    ack = get_meta(conn, table, "anchor_checksum", GENESIS)
    ats = get_meta(conn, table, "anchor_ts_us", None)
    return Anchor(int(aid or 0), bytes(ack) if ack is not None else GENESIS, ats)


_head_cache: dict[str, str] = {}


def read_head(conn: apsw.Connection, table: str) -> tuple[int, bytes, Optional[int]]:
    """``(last_id, last_checksum, last_ts_us)`` of the chain: the last stored event, or the
    anchor when the table is empty. One query for a non-empty log (no meta reads, no
    count); raises :mod:`apsw` errors as they come (the caller translates)."""
    # The anchor (three meta reads) is only needed for an empty table.
    sql = _head_cache.get(table)
    if sql is None:
        sql = f"SELECT id, checksum, ts_us FROM {quoted(table)} ORDER BY id DESC LIMIT 1"
        _head_cache[table] = sql
    for row in conn.execute(sql):
        return row[0], row[1], row[2]
    a = anchor(conn, table)
    return a.id, a.checksum, a.ts_us



def head(conn: apsw.Connection, table: str = DEFAULT_TABLE) -> Head:
    """The head of the chain: ``(last_id, last_checksum, last_ts_us, count)``.

    For an empty table: the anchor (``0``, 32 zero bytes, ``None``, ``0`` for a new log).
    """
    try:
        last_id, last_ck, last_ts = read_head(conn, table)
        a = anchor(conn, table)
    except apsw.Error as exc:
        raise translate(exc) from None
    return Head(last_id, last_ck, last_ts, last_id - a.id)


def _json_or_text(v: Any) -> Optional[str]:
    if v is None or v.__class__ is str:
        return v
    return canonical_json(v)


def append(conn: apsw.Connection, table: str, events: Sequence[EventFields], *,
           max_query_length: Optional[int] = DEFAULT_MAX_QUERY_LENGTH,
           now_us: Optional[int] = None) -> list[int]:
    """Append events to the chain; return their ids.

    Inside the caller's transaction (or ``BEGIN IMMEDIATE`` of its own): reads the head,
    gives each event the next id and the time ``max(now, previous + 1)`` in UTC
    microseconds, computes the checksums (one call into C for the whole batch when the
    native module is built) and inserts the rows with one ``executemany``.

    ``events`` are :class:`EventFields` (or tuples in its field order). ``now_us``
    overrides the clock (tests, imports). Raises ProgrammingError for a bad operation name
    or value type, DataError for an integer outside int64 or text that is not valid
    Unicode; a database error is raised as its heliosdb class.
    """
    if not events:
        return []
    sql = _insert_sql(table)
    maxq = (1 << 62) if max_query_length is None else max_query_length

    def work(c: apsw.Connection) -> list[int]:
        last_id, last_ck, last_ts = read_head(c, table)
        now = time.time_ns() // 1000 if now_us is None else now_us
        # max(now, previous + 1) for the first event, then one microsecond apart: what
        # "never equal to (nor before) the previous event" gives for a batch.
        first_ts = now if last_ts is None or now > last_ts else last_ts + 1
        n = len(events)
        known = _known_ops
        rows: list[Optional[int]] = []
        oks: list[int] = []
        texts: list[Optional[str]] = []
        for ev in events:
            try:
                op, target, user, sid, q, ar, ok, err, md, old, new, reason = ev
                if q is not None and len(q) > maxq:
                    q = q[:maxq]
            except (TypeError, ValueError) as exc:
                raise ProgrammingError(f"bad audit event {ev!r}: {exc}") from None
            if op not in known:
                check_operation(op)
            if md is not None and md.__class__ is not str:
                md = canonical_json(md)
            if old is not None and old.__class__ is not str:
                old = canonical_json(old)
            if new is not None and new.__class__ is not str:
                new = canonical_json(new)
            rows.append(ar)
            oks.append(1 if ok else 0)
            texts += (sid, user, op, target, q, err, md, old, new, reason)
        leaves: list[bytes] = []  # RFC 6962 leaf hashes, for the Merkle frontier
        try:
            # One call into C hashes and inserts the batch (csrc/chain.c, log writer);
            # None: it does not apply here, and the rows go through executemany below.
            written = chain.insert_events(c, sql, last_ck, last_id + 1, first_ts, rows, oks,
                                          texts)
            if written is not None:
                new_ck, leaves, changed = written
            else:
                ids = list(range(last_id + 1, last_id + 1 + n))
                tss = list(range(first_ts, first_ts + n))  # TypeError: a stored ts_us not int
                cks = chain.chain_checksums(last_ck, ids, tss, rows, oks, texts, leaves)
        except TypeError as exc:
            raise ProgrammingError(f"audit event field of the wrong type: {exc}") from None
        except (OverflowError, UnicodeError) as exc:
            raise DataError(f"audit event value cannot be encoded: {exc}") from None
        if written is None:
            prevs = [last_ck] + cks[:-1]
            before = c.total_changes()
            c.executemany(sql, [(i, t, *texts[k:k + 5], r, ok, *texts[k + 5:k + NTEXT], p, ck)
                                for i, t, k, r, ok, p, ck in zip(
                                    ids, tss, range(0, NTEXT * n, NTEXT), rows, oks, prevs,
                                    cks)])
            changed = c.total_changes() - before
            new_ck = cks[-1]
        first, last = last_id + 1, last_id + n
        if changed != n:
            # A trigger on the log (RAISE(IGNORE) drops rows silently; another one writes
            # more): never report events stored that are not, exactly as written.
            raise AuditIntegrityError(
                f"the audit log {table} did not store the {n} event(s) appended (ids "
                f"{first}..{last}): a trigger or other schema object not created by "
                "heliosdb interferes with it; run verify() to name it")
        # -- Merkle frontier (heliosdb/audit/merkle.py), same transaction as the rows --
        merkle.after_append(c, table, last_id, last_ck, leaves, last, new_ck)
        return list(range(first, last + 1))

    return _run(conn, work)


_insert_cache: dict[str, str] = {}


def _insert_sql(table: str) -> str:
    sql = _insert_cache.get(table)
    if sql is None:
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        sql = f"INSERT INTO {quoted(table)} ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})"
        _insert_cache[table] = sql
    return sql


def read_events(conn: apsw.Connection, table: str = DEFAULT_TABLE, *,
                first_id: Optional[int] = None,
                last_id: Optional[int] = None) -> Iterator[AuditEvent]:
    """Stored events in id order, optionally limited to ``first_id..last_id``."""
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    sql = (f"SELECT {cols} FROM {quoted(table)} WHERE id >= ? AND id <= ? ORDER BY id")
    lo = -(1 << 63) if first_id is None else first_id
    hi = (1 << 63) - 1 if last_id is None else last_id
    try:
        for row in conn.execute(sql, (lo, hi)):
            yield AuditEvent.from_row(row)
    except apsw.Error as exc:
        raise translate(exc) from None
