"""Verification of the audit chain: a report that names the first fault, never a bare bool.

Two passes, so that an untouched log costs little more than reading it:

1. Fast path: the rows are read in id order in batches; each batch is handed to
   :func:`heliosdb.audit.chain.verify_rows` (one call into C per batch) which checks ids,
   time, links and checksums and returns the index of the first bad row.
2. Diagnosis, only when a row is bad: Python looks at that row, its neighbours and (by
   SQL) the rows whose checksum it links to, and names the fault.

Faults (:data:`FAULTS`):

``modified``
    A row's fields do not match its checksum (any column changed, including
    ``prev_hash``, ``checksum`` and ``id``), or the chain disagrees with a signed
    checkpoint (rewritten and re-hashed).
``deleted``
    Events are missing: an id gap, or a row links to a checksum no stored row has.
``inserted``
    A row is not part of the chain: the next row links past it, or it sits outside the
    id sequence with a valid link.
``reordered``
    A row links to a row stored *after* it.
``truncated``
    The log ends before the position of a checkpoint that this database recorded.
``rolled_back``
    The database is older than the checkpoint (it does not know it): a copy restored.
``time_went_backwards``
    A row that is otherwise intact has a ``ts_us`` not after the previous one.
``bad_signature``
    The checkpoint's signature does not verify under the given key (or, with no key
    given, under the signer pinned in the database by its first checkpoint).
``foreign_schema``
    A trigger, view or index HeliosDB did not create sits on the log or writes to it
    (:func:`heliosdb.audit.neighbourhood.find_foreign_schema`); reported first, even when
    the chain is intact: such a trigger can drop or forge events without breaking it.
``unproven_anchor``
    The log starts after a purge anchor (``__audit_meta``) that nothing proves: no
    RETENTION_PURGE event in the chain records it, or a checkpoint signed an event that
    is gone and no archive links that event to the anchor. Events were deleted from the
    start of the log, or the anchor was forged.

Without a checkpoint, removing events from the *end* of the log is undetectable (the
shorter chain is valid); so is re-hashing the whole chain. Checkpoints close both.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import chain as _chain
from itertools import islice
from typing import Any, Callable, Iterable, Optional

import apsw

from ..errors import AuditIntegrityError, DatabaseError, OperationalError, ProgrammingError, translate
from . import chain
from .events import COLUMNS, TEXT_FIELDS, AuditEvent, encode_event
from .events import GENESIS
from .store import DEFAULT_TABLE, anchor, check_table_name, get_meta, quoted, read_head

__all__ = ["FAULTS", "VerifyReport", "AuditIntegrityError", "verify_connection",
           "purge_records", "archive_candidates", "chain_walk_sql", "split_columns"]

FAULTS: tuple[str, ...] = ("foreign_schema", "modified", "deleted", "inserted", "reordered",
                           "truncated", "time_went_backwards", "bad_signature", "rolled_back",
                           "unproven_anchor")

_BATCH = 8192
#: Use the C aggregate inside SQLite when it can be registered (tests switch it off to
#: exercise the batch-fed path too).
_USE_SQL_AGGREGATE = True
_RENUMBER_PROBE = 64  # how far diagnosis looks for an event renumbered after a deletion


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying an audit log.

    ``ok`` is True when no fault was found. ``events_checked`` counts the events verified
    before the first fault (or all of them). ``first_bad_id`` is the id of the first
    event found bad (for ``truncated``/``rolled_back``: the first event that is missing),
    ``fault`` one of :data:`FAULTS` or None, ``message`` says what is wrong and where.
    ``head_id``/``head_checksum`` describe the last good event reached.

    A report has no truth value: ``if report:`` raises TypeError (a report about a
    tampered log is still an object, so truthiness would be a trap). Test ``report.ok``,
    or call :meth:`raise_for_fault`.
    """

    ok: bool
    events_checked: int
    first_bad_id: Optional[int]
    fault: Optional[str]
    message: str
    head_id: Optional[int] = None
    head_checksum: Optional[bytes] = None
    checkpoint_id: Optional[int] = None

    def __bool__(self) -> bool:
        raise TypeError("a VerifyReport has no truth value: test report.ok (or call "
                        "report.raise_for_fault())")

    def raise_for_fault(self) -> "VerifyReport":
        """Return self when ok, else raise :class:`AuditIntegrityError` with the message."""
        if not self.ok:
            raise AuditIntegrityError(self.message, self)
        return self


# --- row checks used by the diagnosis (pure Python, strict about types) -------------------

def _type_problem(ev: AuditEvent) -> Optional[str]:
    for name in ("id", "ts_us", "success"):
        if type(getattr(ev, name)) is not int:
            return f"column {name} holds {_tname(getattr(ev, name))}, not an integer"
    if ev.affected_rows is not None and type(ev.affected_rows) is not int:
        return f"column affected_rows holds {_tname(ev.affected_rows)}, not an integer"
    for name in TEXT_FIELDS:
        v = getattr(ev, name)
        if v is not None and type(v) is not str:
            return f"column {name} holds {_tname(v)}, not text"
    for name in ("prev_hash", "checksum"):
        v = getattr(ev, name)
        if type(v) is not bytes or len(v) != 32:
            return f"column {name} holds {_tname(v)}, not a 32-byte hash"
    return None


def _tname(v: Any) -> str:
    if isinstance(v, _BadText):
        return "text that is not valid UTF-8"
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return f"a {len(v)}-byte blob"
    return {int: "an integer", float: "a real", str: "text"}.get(type(v), type(v).__name__)


def _consistent(ev: AuditEvent, id: Optional[int] = None) -> bool:
    """True when SHA-256(stored prev || encoding, with ``id`` if given) = stored checksum."""
    if _type_problem(ev) is not None:
        return False
    try:
        enc = encode_event(ev.id if id is None else id, ev.ts_us, ev.affected_rows,
                           ev.success, ev.texts())
    except (TypeError, ValueError, OverflowError):
        return False
    return hashlib.sha256(ev.prev_hash + enc).digest() == ev.checksum


class _BadText(bytes):
    """A TEXT value that is not valid UTF-8 (only a tampered row holds one)."""


class _Ctx:
    """Reads rows for the diagnosis and the slow path (rare: after the fast path balked).

    Text is fetched as bytes and decoded here, so that a row holding invalid UTF-8 is
    reported as modified instead of stopping the verification with a decoding error.
    """

    def __init__(self, conn: apsw.Connection, table: str) -> None:
        self.conn = conn
        self.t = quoted(table)
        self.cols = ", ".join(f'typeof("{c}"), "{c}"' for c in COLUMNS)
        # Fallback when a text is not valid UTF-8: its raw bytes (in the database's text
        # encoding, which a tampered row's invalid text was written in anyway).
        self.raw_cols = ", ".join(
            f'typeof("{c}"), CASE WHEN typeof("{c}") = \'text\' THEN CAST("{c}" AS BLOB) '
            f'ELSE "{c}" END' for c in COLUMNS)

    @staticmethod
    def _event(row: tuple) -> AuditEvent:
        vals = []
        for k in range(0, len(row), 2):
            t, v = row[k], row[k + 1]
            if t == "text" and v.__class__ is bytes:
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError:
                    v = _BadText(v)
            vals.append(v)
        return AuditEvent.from_row(vals)

    def _select(self, where: str, args: tuple, limit: int) -> list[AuditEvent]:
        try:
            return [self._event(r) for r in self.conn.execute(
                f"SELECT {self.cols} FROM {self.t} {where} ORDER BY id LIMIT ?",
                args + (limit,))]
        except UnicodeDecodeError:
            return [self._event(r) for r in self.conn.execute(
                f"SELECT {self.raw_cols} FROM {self.t} {where} ORDER BY id LIMIT ?",
                args + (limit,))]

    def _one(self, where: str, args: tuple) -> Optional[AuditEvent]:
        rows = self._select(f"WHERE {where}", args, 1)
        return rows[0] if rows else None

    def at(self, id: int) -> Optional[AuditEvent]:
        return self._one("id = ?", (id,))

    def after(self, id: int) -> Optional[AuditEvent]:
        return self._one("id > ?", (id,))

    def by_checksum(self, ck: Any) -> Optional[AuditEvent]:
        # A full scan; diagnosis runs once per verification, after a fault.
        return self._one("checksum = ?", (ck,))

    def rows_after(self, id: Optional[int], n: int) -> list[AuditEvent]:
        if id is None:
            return self._select("", (), n)
        return self._select("WHERE id > ?", (id,), n)


def _diagnose(ctx: _Ctx, r: AuditEvent, e: int, c: bytes) -> tuple[str, int, str]:
    """Name the fault at row ``r``, expected to be event ``e`` linked to checksum ``c``."""
    tp = _type_problem(r)
    if tp is not None and not tp.startswith(("column prev_hash", "column checksum")):
        return "modified", r.id, f"event {r.id}: {tp}: the row was changed after it was written"
    ok_self = _consistent(r)
    nxt = ctx.after(r.id)
    if r.prev_hash != c:
        j = ctx.by_checksum(r.prev_hash) if tp is None else None
        if j is not None and j.id > r.id:
            if r.id > e and _consistent(j, id=e):
                return ("modified", e, f"event {e} was moved: its id was changed to {j.id} "
                        f"(its contents and checksum say it is event {e})")
            return ("reordered", r.id, f"event {r.id} links to event {j.id}, which is stored "
                    f"after it: events were reordered (the row at id {r.id} holds another "
                    "event's contents)")
        if j is not None and j.id < r.id:
            return ("inserted", j.id + 1, f"event {r.id} continues the chain from event "
                    f"{j.id}: the row(s) {j.id + 1}..{r.id - 1} between them are not part of "
                    "the chain (inserted)")
        if r.id > e:
            return ("deleted", e, f"events {e}..{r.id - 1} are missing: event {r.id} links to "
                    "a checksum no stored event has (deleted)" if r.id - 1 > e else
                    f"event {e} is missing: event {r.id} links to a checksum no stored event "
                    "has (deleted)")
        if r.id < e:
            return ("inserted", r.id, f"event {r.id} lies before the start of the chain "
                    f"(expected event {e} next): it was inserted")
        if not ok_self and tp is None:
            for k in range(1, _RENUMBER_PROBE + 1):
                if _consistent(r, id=r.id + k):
                    return ("deleted", r.id, f"the event stored as {r.id} was written as event "
                            f"{r.id + k}: {k} event(s) before it were deleted and the later "
                            "ids renumbered")
        if ok_self:
            return ("modified", r.id, f"event {r.id} does not link to event {e - 1} and no "
                    "stored event has the checksum it links to, yet its own checksum "
                    "matches: it was rewritten with a new prev_hash and checksum (or the "
                    "events before it were deleted and it was re-hashed)")
        return ("modified", r.id, f"event {r.id}: its prev_hash does not match the checksum of "
                f"event {e - 1} and its fields do not match its checksum: prev_hash (and "
                "perhaps other columns) was changed")
    # r links correctly to the previous event.
    if r.id != e:
        if r.id > e and _consistent(r, id=e):
            return ("modified", e, f"event {e}'s id was changed to {r.id} (its contents and "
                    f"checksum say it is event {e})")
        if r.id < e:
            return ("inserted", r.id, f"event {r.id} lies before the start of the chain "
                    f"(expected event {e} next): it was inserted")
        return ("inserted", r.id, f"event {r.id} links to event {e - 1} but the next id is "
                f"{e}: it was inserted with an id that does not fit the sequence")
    if not ok_self:
        if nxt is not None and nxt.prev_hash == c:
            return ("inserted", r.id, f"event {r.id} is not part of the chain: the event after "
                    f"it (stored as {nxt.id}) continues from event {e - 1} (inserted)")
        if tp is not None:
            return "modified", r.id, f"event {r.id}: {tp}: the row was changed"
        if nxt is not None and nxt.prev_hash != r.checksum and _consistent(nxt):
            return ("modified", r.id, f"event {r.id}: its stored checksum was changed (the "
                    f"next event links to a different one)")
        return ("modified", r.id, f"event {r.id}: its fields do not match its checksum: a "
                "value was changed after it was written")
    # Intact and linked: only time can be wrong.
    return ("time_went_backwards", r.id, f"event {r.id} has a timestamp ({r.ts_us} us) that "
            "is not after the previous event's, although the chain is intact: the chain was "
            "rewritten with a backdated time, or the writer's clock went back")


# --- the fast walk --------------------------------------------------------------------------

def chain_walk_sql(table: str, where: str) -> str:
    """The SELECT that reads events for the chain check (ids ``where`` says), in the
    column layout :func:`split_columns` takes apart."""
    # One bytes value per row for the ten texts (UTF-8 as stored, NUL-separated, a NULL
    # being an empty slot) and one integer saying which fields are NULL (bit f: text f,
    # bit 10: affected_rows): a tenth of the Python objects ten columns would cost, and no
    # decode/encode round trip. No stored value stands for NULL, so none can pass for it.
    # The type check keeps a BLOB holding the same bytes as the text it replaced from
    # passing as that text.
    texts = " || x'00' || ".join(f"ifnull(\"{c}\", '')" for c in TEXT_FIELDS)
    mask = " | ".join(f"((\"{c}\" IS NULL) << {k})" for k, c in enumerate(TEXT_FIELDS))
    mask += f" | ((affected_rows IS NULL) << {len(TEXT_FIELDS)})"
    types = " AND ".join(f"typeof(\"{c}\") IN ('text', 'null')" for c in TEXT_FIELDS)
    return (f"SELECT CAST({texts} AS BLOB), id, ts_us, affected_rows, success, {types}, "
            f"prev_hash, checksum, {mask} FROM {quoted(table)} {where} ORDER BY id")


_NCOL = 9


def split_columns(batch: list[tuple]) -> tuple[list, ...]:
    """Rows of :func:`chain_walk_sql` as one list per column."""
    flat = list(_chain.from_iterable(batch))
    return tuple(flat[k::_NCOL] for k in range(_NCOL))


@dataclass
class _State:
    expect_id: int
    link: bytes
    last_ts: Optional[int]
    checked: int = 0
    #: The Merkle tree (size, frontier) over the events walked so far, when tracked by the
    #: walk (the C aggregate in tree mode); its root at the checkpoint's event.
    tree: Optional[tuple] = None
    tree_start: Optional[tuple] = None
    cp_root: Optional[bytes] = None


def _report(fault: Optional[str], first_bad: Optional[int], msg: str, st: _State,
            cp_id: Optional[int]) -> VerifyReport:
    return VerifyReport(ok=fault is None, events_checked=st.checked, first_bad_id=first_bad,
                        fault=fault, message=msg, head_id=st.expect_id - 1,
                        head_checksum=st.link, checkpoint_id=cp_id)


def verify_connection(conn: apsw.Connection, table: str = DEFAULT_TABLE, *,
                      checkpoint: Any = None, public_key: Any = None,
                      hmac_key: Optional[bytes] = None, since_checkpoint: bool = False,
                      progress: Optional[Callable[[int], Any]] = None,
                      batch_size: int = _BATCH,
                      archives: Optional[Iterable[Any]] = None,
                      since: Any = None) -> VerifyReport:
    """Verify the audit chain in ``table`` of an open APSW connection.

    With ``checkpoint`` (a :class:`heliosdb.audit.checkpoint.Checkpoint`), its signature is
    checked with ``public_key`` (Ed25519: an ``Ed25519PublicKey`` or 32 raw bytes) or
    ``hmac_key``, and the log must contain the signed head: this detects a truncated tail,
    a re-hashed chain and a database rolled back to an older copy.
    Without a key, the Ed25519 signer pinned in the database by its first checkpoint
    checks it (never the public key the checkpoint file carries); with no usable pin
    (none, or an HMAC signer) ProgrammingError asks for the key.
    ``since_checkpoint=True`` checks only the events after the checkpoint (incremental);
    ``since=cp`` is the same as ``checkpoint=cp, since_checkpoint=True``.

    The Merkle tree (:mod:`.merkle`) is checked too: the tree over the walked events,
    started from the signed frontier of a version 2 checkpoint (incremental) or from the
    anchor (the empty tree, or the frontier the proving RETENTION_PURGE event records),
    must reproduce the signed root at the checkpoint's event and equal the tree recorded in
    ``__audit_meta`` at the head; otherwise the fault is ``modified``.
    ``progress(events_checked)`` is called after each batch.

    Nothing read from the file is trusted as written: a trigger, view or index on the log
    that HeliosDB did not create is the fault ``foreign_schema``; a purge anchor must be
    recorded by a RETENTION_PURGE event of the verified chain and, when a checkpoint signed
    an event the purge removed, linked to it by the retention archives: ``archives``
    (paths; default: the archives found next to the database file), else the fault
    ``unproven_anchor``.

    Reads inside one transaction (a snapshot: concurrent appends do not disturb it).
    Raises OperationalError when the table does not exist (without a checkpoint, nothing
    could prove it ever did) and ProgrammingError for misuse (no key for a checkpoint,
    a checkpoint of another table).
    """
    check_table_name(table)
    if since is not None:
        if checkpoint is not None and checkpoint is not since:
            raise ProgrammingError("give since= or checkpoint=, not both")
        checkpoint, since_checkpoint = since, True
    if since_checkpoint and checkpoint is None:
        raise ProgrammingError("since_checkpoint=True needs checkpoint=")
    if checkpoint is not None:
        if checkpoint.table != table:
            raise ProgrammingError(f"the checkpoint is for table {checkpoint.table!r}, not "
                                   f"{table!r}")
    arch = None if archives is None else [str(a) for a in archives]
    try:
        if conn.in_transaction:
            return _verify(conn, table, checkpoint, public_key, hmac_key, since_checkpoint,
                           progress, batch_size, arch)
        conn.execute("BEGIN")
        try:
            return _verify(conn, table, checkpoint, public_key, hmac_key, since_checkpoint,
                           progress, batch_size, arch)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")  # a read transaction: nothing to write
    except apsw.Error as exc:
        raise translate(exc) from None


def _verify(conn: apsw.Connection, table: str, cp: Any, public_key: Any,
            hmac_key: Optional[bytes], since_checkpoint: bool,
            progress: Optional[Callable[[int], Any]], batch_size: int,
            archives: Optional[list]) -> VerifyReport:
    from .neighbourhood import find_foreign_schema

    cp_id = cp.event_id if cp is not None else None
    exists = any(conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)))
    anc = anchor(conn, table)
    st = _State(anc.id + 1, anc.checksum, anc.ts_us)
    foreign = find_foreign_schema(conn, [table])
    if foreign:
        names = "; ".join(str(f) for f in foreign)
        return _report("foreign_schema", None, f"{len(foreign)} schema object(s) HeliosDB did "
                       f"not create act on the audit log: {names}. Such an object can drop, "
                       "alter or forge events without breaking the chain: inspect it, and "
                       "drop it (DROP TRIGGER/VIEW/INDEX) once the incident is recorded",
                       st, cp_id)
    if cp is not None:
        if public_key is None and hmac_key is None:
            from .checkpoint import pinned_public_key
            public_key = pinned_public_key(conn, table, cp)  # raises when nothing can check
        problem = cp.verify_signature(public_key=public_key, hmac_key=hmac_key)
        if problem is not None:
            return _report("bad_signature", None, f"checkpoint #{cp.seq} (event {cp.event_id}) "
                           f"does not verify: {problem}", st, cp_id)
        if getattr(cp, "tree_size", None) is not None:
            cp.check_tree()  # signed but self-inconsistent: ProgrammingError
        db_id = get_meta(conn, table, "database_id")
        if exists and db_id is not None and db_id != cp.database_id:
            return _report("modified", None, f"checkpoint #{cp.seq} was taken of database "
                           f"{cp.database_id}, but this file is database {db_id}: the file "
                           "was replaced, or this is the wrong checkpoint", st, cp_id)
    if not exists:
        if cp is None:
            raise OperationalError(f"no audit table {table!r} in this database")
        return _report("truncated", anc.id + 1, f"the audit table {table!r} is missing but "
                       f"checkpoint #{cp.seq} vouches for {cp.event_id} events: the log was "
                       "dropped", st, cp_id)
    ctx = _Ctx(conn, table)
    where = ""
    args: tuple = ()
    if since_checkpoint and cp.event_id > anc.id:
        row = ctx.at(cp.event_id)
        if row is None:
            return _tail_missing(conn, table, cp, st, cp_id)
        if row.checksum != cp.checksum or not _consistent(row):
            return _report("modified", cp.event_id, f"event {cp.event_id} no longer has the "
                           f"checksum signed in checkpoint #{cp.seq}: the chain was "
                           f"rewritten at or before event {cp.event_id}", st, cp_id)
        st = _State(cp.event_id + 1, cp.checksum, row.ts_us)
        where, args = "WHERE id > ?", (cp.event_id,)
        if getattr(cp, "tree_size", None) is not None:
            st.tree_start = (cp.tree_size, cp.frontier_bytes())  # signed
    else:
        st.tree_start = _anchor_tree(conn, table, anc)
    st.tree = st.tree_start

    last_row_id: Optional[int] = cp.event_id if where else None
    slow = False  # set when the fast query cannot even be read (invalid UTF-8 in a text)
    if _USE_SQL_AGGREGATE and chain.register_sql_check(conn):
        # Fastest: the C aggregate walks the table inside SQLite, a chunk of ids at a time
        # (for progress reports). On a bad row, the row-by-row loop below takes over from
        # the last good row and names the fault.
        slow, last_row_id = _aggregate_walk(conn, table, st, last_row_id, progress,
                                            batch_size * 8,
                                            cp.event_id if cp is not None else None)
        if not slow:
            if cp is not None and not where and anc.id < cp.event_id < st.expect_id:
                row = ctx.at(cp.event_id)
                if row is not None and row.checksum != cp.checksum:
                    st_cp = _State(cp.event_id, row.prev_hash, None,
                                   cp.event_id - 1 - anc.id)
                    return _report("modified", cp.event_id, _rewritten(cp), st_cp, cp_id)
            return _finish(conn, table, cp, st, cp_id, archives)
    cur = conn.execute(chain_walk_sql(table, where), args)
    try:
        while True:
            if not slow:
                try:
                    batch = list(islice(cur, batch_size))
                except UnicodeDecodeError:
                    slow = True
                    continue
                if not batch:
                    break
                texts, ids, ts, rows, succ, types_ok, prevs, cks, masks = split_columns(batch)
                try:
                    if 0 in types_ok:
                        raise chain.MalformedBatch("a text column holds another type")
                    bad, link = chain.verify_rows(st.link, st.expect_id, st.last_ts, ids, ts,
                                                  rows, succ, texts, prevs, cks, masks)
                except chain.MalformedBatch:
                    bad = 0
                if bad >= 0:
                    # The fast path only points; the row-by-row check decides (it reads
                    # values as Python does, so odd encodings cannot cause a false alarm).
                    evs = ctx.rows_after(last_row_id, len(ids))
                    bad, link = _slow_rows(evs, st)
                    ids = [e.id for e in evs]
                    ts = [e.ts_us for e in evs]
            else:
                evs = ctx.rows_after(last_row_id, batch_size)
                if not evs:
                    break
                ids = [e.id for e in evs]
                ts = [e.ts_us for e in evs]
                cks = [e.checksum for e in evs]
                bad, link = _slow_rows(evs, st)
            if bad >= 0:
                st.checked += bad
                if bad > 0:
                    st.last_ts = ts[bad - 1]
                st.expect_id += bad
                st.link = link
                r = ctx.at(ids[bad])
                assert r is not None
                fault, first_bad, msg = _diagnose(ctx, r, st.expect_id, st.link)
                return _report(fault, first_bad, msg, st, cp_id)
            if cp is not None and st.expect_id <= cp.event_id < st.expect_id + len(ids):
                if cks[cp.event_id - st.expect_id] != cp.checksum:
                    st.checked += cp.event_id - st.expect_id
                    return _report("modified", cp.event_id, _rewritten(cp), st, cp_id)
            st.checked += len(ids)
            st.expect_id += len(ids)
            st.link = link
            st.last_ts = ts[-1]
            last_row_id = ids[-1]
            if progress is not None:
                progress(st.checked)
    finally:
        cur.close()

    return _finish(conn, table, cp, st, cp_id, archives)


def _finish(conn: apsw.Connection, table: str, cp: Any, st: _State,
            cp_id: Optional[int], archives: Optional[list] = None) -> VerifyReport:
    """The chain is intact: check it against the checkpoint's position and number, and
    check that its start (the purge anchor) is proven."""
    if cp is not None:
        if cp.event_id > st.expect_id - 1:
            return _tail_missing(conn, table, cp, st, cp_id)
        seq = int(get_meta(conn, table, "checkpoint_seq", 0) or 0)
        if seq < cp.seq:
            return _report("rolled_back", None, f"this database does not know checkpoint "
                           f"#{cp.seq} (it has #{seq}): the file was restored from a copy "
                           "made before that checkpoint was taken", st, cp_id)
    problem = _anchor_problem(conn, table, cp, archives)
    if problem is not None:
        first_bad, msg = problem
        return _report("unproven_anchor", first_bad, msg, st, cp_id)
    head = st.expect_id - 1
    tree_note, tproblem = _tree_problem(conn, table, cp, st, head)
    if tproblem is not None:
        first_bad, msg = tproblem
        return _report("modified", first_bad, msg, st, cp_id)
    msg = f"{st.checked} event(s) verified, head is event {head}"
    if cp is not None:
        msg += f", consistent with signed checkpoint #{cp.seq} (event {cp.event_id})"
    else:
        msg += " (without a checkpoint, a truncated tail cannot be detected)"
    if tree_note:
        msg += f"; {tree_note}"
    return _report(None, None, msg, st, cp_id)


def _anchor_tree(conn: apsw.Connection, table: str, anc: Any) -> Optional[tuple]:
    """The Merkle tree at the anchor: empty for a log never purged; else the frontier the
    RETENTION_PURGE event recording this anchor holds (the chain proves that event; the
    meta copy is not used). None when no such record exists (purged before trees)."""
    if anc.id == 0:
        return (0, b"")
    from . import merkle
    for d in purge_records(conn, table, anc.id):
        if d.get("last_id") == anc.id and d.get("anchor_checksum") == anc.checksum.hex():
            fr = d.get("tree_frontier")
            if not isinstance(fr, list):
                continue
            try:
                tree = (anc.id, b"".join(bytes.fromhex(h) for h in fr))
                merkle._check_frontier(*tree)
            except (TypeError, ValueError):
                continue
            return tree
    return None


def _tree_problem(conn: apsw.Connection, table: str, cp: Any, st: _State, head: int
                  ) -> tuple[str, Optional[tuple[Optional[int], str]]]:
    """(a note for the report, None) when the Merkle tree checks, else ("", (first bad id,
    message)). The tree over the verified events must reproduce the root a version 2
    checkpoint signs, and equal the tree recorded in ``__audit_meta`` (which the writer
    extends and the next checkpoint signs)."""
    from . import merkle

    v2 = cp is not None and getattr(cp, "tree_size", None) is not None
    if st.tree_start is None:
        if cp is not None and not v2 and st.expect_id - 1 - st.checked == cp.event_id:
            return (f"the Merkle tree is not checked: checkpoint #{cp.seq} is version 1 "
                    "(it signs no tree)", None)
        return ("the Merkle tree is not checked: the log was purged before it had one", None)
    start_size = st.tree_start[0]
    if st.tree is None or st.tree[0] != head:
        # The walk did not track the tree (the batch or pure path): a pass of its own.
        try:
            if v2 and start_size < cp.tree_size <= head:
                at_cp = merkle.fold_stored(conn, table, *st.tree_start, cp.tree_size)
                st.cp_root = merkle.root(at_cp[1])
                st.tree = merkle.fold_stored(conn, table, *at_cp, head)
            else:
                st.tree = merkle.fold_stored(conn, table, *st.tree_start, head)
        except AuditIntegrityError as exc:
            return ("", (None, f"the Merkle tree cannot be recomputed: {exc}"))
    if v2:
        if start_size == cp.tree_size and st.tree_start[1] != cp.frontier_bytes():
            return ("", (cp.event_id, f"the Merkle tree at event {cp.event_id} is not the one "
                         f"signed in checkpoint #{cp.seq}: the purge record's frontier was "
                         "forged"))
        if start_size < cp.tree_size <= head and st.cp_root != cp.root_hash:
            return ("", (cp.event_id, f"the events up to {cp.event_id} do not reproduce the "
                         f"Merkle root signed in checkpoint #{cp.seq}: the log (or the "
                         "frontier it starts from) was rewritten"))
    stored = merkle.stored_tree(conn, table)
    if stored is None:
        if head == start_size == 0 or (not v2 and merkle._meta(conn, table, merkle.TREE_META)
                                       is None):
            return ("no Merkle tree recorded yet (it is built at the next append)", None)
        return ("", (None, "the Merkle tree record in __audit_meta (merkle_tree) is missing "
                     "or malformed while the log has a tree: it was removed or altered"))
    if stored[0] != head and not v2:
        # Not at the head: stale (events appended by a release without trees) or the tail
        # was cut, which without a checkpoint nothing proves; rebuilt at the next append.
        return (f"the Merkle tree recorded in __audit_meta ends at event {stored[0]}, not at "
                "the head: it is rebuilt from the events at the next append", None)
    if stored != st.tree and not v2:
        # Without a signed tree nothing vouches for either: someone who can write the file
        # can recompute the record as easily as the chain (the documented limit).
        return (f"WARNING: the Merkle tree recorded in __audit_meta is not the tree of the "
                f"verified events; without a version 2 checkpoint nothing is signed, so this "
                f"is reported, not a fault: take a checkpoint only after finding out why", None)
    if stored != st.tree:
        return ("", (None, f"the Merkle tree recorded in __audit_meta ({stored[0]} leaves) "
                     f"is not the tree of the verified events ({st.tree[0]} leaves, root "
                     f"{merkle.root(st.tree[1]).hex()[:16]}...): it was altered, and proofs or "
                     "checkpoints taken from it would not hold"))
    what = (f"Merkle tree of {head} events consistent with checkpoint #{cp.seq}'s signed "
            f"root" if v2 else f"Merkle tree of {head} events matches the recorded one")
    return (what, None)


def _rewritten(cp: Any) -> str:
    return (f"the chain is internally consistent but event {cp.event_id} does not have the "
            f"checksum signed in checkpoint #{cp.seq}: the log was rewritten and re-hashed "
            f"at or before event {cp.event_id}")


def _aggregate_walk(conn: apsw.Connection, table: str, st: _State,
                    last_row_id: Optional[int], progress: Optional[Callable[[int], Any]],
                    chunk: int, stop_at: Optional[int] = None) -> tuple[bool, Optional[int]]:
    """Walk with the C aggregate. Returns (a bad row was met, id of the last good row).

    With ``st.tree`` set, the aggregate's tree mode also folds each good row's Merkle leaf
    into the frontier; a chunk ends at ``stop_at`` (the checkpoint's event), whose root is
    kept in ``st.cp_root``."""
    t = quoted(table)
    texts = ", ".join(f'"{c}"' for c in TEXT_FIELDS)
    tree_args = "?, ?, " if st.tree is not None else ""
    sql = (f"SELECT heliosdb_chain_check({tree_args}?, ?, ?, id, ts_us, affected_rows, "
           f"success, {texts}, prev_hash, checksum) FROM {t} WHERE id > ? AND id <= ?")
    lo = last_row_id
    if lo is None:
        (lo,) = next(conn.execute(f"SELECT min(id) FROM {t}"))
        if lo is None:
            return False, None
        lo -= 1
    (hi,) = next(conn.execute(f"SELECT max(id) FROM {t}"))
    if hi is None:
        return False, last_row_id
    while lo < hi:
        end = min(hi, lo + chunk)
        if stop_at is not None and lo < stop_at < end:
            end = stop_at
        tree_vals = (st.tree[1], st.tree[0]) if st.tree is not None else ()
        ((blob,),) = conn.execute(sql, tree_vals + (st.link, st.expect_id, st.last_ts, lo,
                                                    end))
        n_good, failed, _bad_id, last_ts, link = chain.decode_check_result(blob)
        if st.tree is not None and blob is not None:
            tr = chain.decode_check_tree(blob)
            if tr is not None:
                st.tree = tr
                if tr[0] == stop_at:
                    from .merkle import root
                    st.cp_root = root(tr[1])
        if n_good:
            st.checked += n_good
            st.expect_id += n_good
            st.link = link
            st.last_ts = last_ts
            last_row_id = st.expect_id - 1
        if failed:
            return True, last_row_id
        if blob is not None and n_good:
            lo = last_row_id
        else:
            lo = end
        if progress is not None:
            progress(st.checked)
    return False, last_row_id


def _tail_missing(conn: apsw.Connection, table: str, cp: Any, st: _State,
                  cp_id: Optional[int]) -> VerifyReport:
    head = read_head(conn, table)[0]  # not st: an incremental walk may not have started
    seq = int(get_meta(conn, table, "checkpoint_seq", 0) or 0)
    if seq >= cp.seq:
        return _report("truncated", head + 1, f"the log ends at event {head} but signed "
                       f"checkpoint #{cp.seq} vouches for events up to {cp.event_id}: events "
                       f"{head + 1}..{cp.event_id} were removed from the tail", st, cp_id)
    return _report("rolled_back", head + 1, f"the log ends at event {head} and this database "
                   f"does not know checkpoint #{cp.seq} (it has #{seq}), which vouches for "
                   f"events up to {cp.event_id}: the file was restored from an older copy, "
                   f"missing events {head + 1}..{cp.event_id} (or it was truncated and its "
                   "checkpoint record removed)", st, cp_id)


def _slow_rows(evs: list[AuditEvent], st: _State) -> tuple[int, bytes]:
    """Row-by-row check of rows the fast path refused (odd types, U+0000 in a text)."""
    link, e, lt = st.link, st.expect_id, st.last_ts
    for i, r in enumerate(evs):
        good = (r.id == e + i and type(r.ts_us) is int and (lt is None or r.ts_us > lt)
                and r.prev_hash == link and _consistent(r))
        if not good:
            return i, link
        link, lt = r.checksum, r.ts_us
    return -1, link


# --- the purge anchor must be proven ----------------------------------------------------------

def purge_records(conn: apsw.Connection, table: str, after_id: int) -> list[dict]:
    """Details of the successful RETENTION_PURGE events stored after ``after_id``."""
    import json

    out = []
    for (md,) in conn.execute(f"SELECT metadata FROM {quoted(table)} WHERE operation = "
                              "'RETENTION_PURGE' AND success = 1 AND id > ? ORDER BY id",
                              (after_id,)):
        try:
            d = json.loads(md).get("details")
        except (TypeError, ValueError, AttributeError):
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


def _anchor_problem(conn: apsw.Connection, table: str, cp: Any,
                    archives: Optional[list]) -> Optional[tuple[Optional[int], str]]:
    """None when the stored chain's start is proven, else (first unproven id, message).

    Called after the chain verified: the RETENTION_PURGE events it holds are genuine as
    far as the chain (and a checkpoint covering them) can tell.
    """
    anc = anchor(conn, table)
    if anc.id == 0 and anc.checksum == GENESIS:
        return None  # never purged: the chain starts at genesis
    if anc.id <= 0:
        return (1, f"the purge anchor in __audit_meta (id {anc.id}, checksum "
                f"{anc.checksum.hex()[:16]}...) is not the genesis of a log: it was forged")
    recs = purge_records(conn, table, anc.id)
    hexck = anc.checksum.hex()
    if not any(d.get("last_id") == anc.id and d.get("anchor_checksum") == hexck
               for d in recs):
        return (1, f"the log starts after event {anc.id} (the purge anchor in __audit_meta) "
                f"but no RETENTION_PURGE event in the verified chain records a purge of "
                f"events up to {anc.id} with that checksum: events 1..{anc.id} were deleted "
                "outside a retention purge, or the anchor was forged")
    if cp is None or cp.event_id > anc.id:
        return None  # the walk linked the anchor to the signed head (or nothing is signed)
    if cp.event_id == anc.id and cp.checksum != anc.checksum:
        return (anc.id, f"checkpoint #{cp.seq} signs event {cp.event_id} with checksum "
                f"{cp.checksum.hex()[:16]}..., but the purge anchor in __audit_meta "
                f"claims {hexck[:16]}...: the anchor was forged")
    # The signed event was purged (the checkpoint's checksum is public: an anchor that
    # merely repeats it proves nothing): only the archives holding the purged events can
    # link the signed event to the anchor.
    why = _archives_link(conn, table, cp, anc, archives)
    if why is None:
        return None
    return (cp.event_id, f"checkpoint #{cp.seq} signs event {cp.event_id}, which is no longer "
            f"in the log (it starts after event {anc.id}); the purge is proven only by the "
            f"retention archives linking event {cp.event_id} to the anchor, and {why}. Pass "
            "the archive files (archives=[...]) or keep them next to the database")


def archive_candidates(conn: apsw.Connection, table: str, given: Optional[list],
                       names: list) -> list[str]:
    """Paths of the archives that may hold purged events: ``given`` if the caller named
    them, else the files ``names`` (from the RETENTION_PURGE records) and the archive
    naming pattern find beside the database file."""
    import glob
    import os

    if given is not None:
        return list(given)
    try:
        dbfile = conn.db_filename("main")
    except apsw.Error:  # a closed or odd connection: no file to look beside
        dbfile = ""
    if not dbfile:
        return []
    d = os.path.dirname(os.path.abspath(dbfile))
    out = {os.path.join(d, n) for n in names if isinstance(n, str) and "/" not in n}
    out.update(glob.glob(os.path.join(glob.escape(d), f"*.{table}.*-*.jsonl.gz")))
    out.update(glob.glob(os.path.join(glob.escape(d), f"{table}.*-*.jsonl.gz")))
    return sorted(p for p in out if os.path.isfile(p))


def _archives_link(conn: apsw.Connection, table: str, cp: Any, anc: Any,
                   given: Optional[list]) -> Optional[str]:
    """None when verified archives chain from the signed event to the anchor, else why
    not."""
    from .export import read_export, verify_export

    recs = purge_records(conn, table, anc.id)
    paths = archive_candidates(conn, table, given, [d.get("archive") for d in recs])
    db_id = get_meta(conn, table, "database_id")
    heads = []
    for p in paths:
        try:
            header, _fmt, records = read_export(p)
            if hasattr(records, "close"):
                records.close()
        except Exception:  # noqa: BLE001 - not an archive we can use
            continue
        if not isinstance(header, dict) or header.get("table") != table \
                or header.get("database_id") != db_id:
            continue
        try:
            first, last = int(header["first_id"]), int(header["last_id"])
        except (KeyError, TypeError, ValueError):
            continue
        heads.append((first, last, p))
    if not heads:
        return "no archive of this log was found"
    if cp.event_id == anc.id:
        for first, last, p in heads:
            if last != anc.id:
                continue
            rep = verify_export(p)
            if rep.ok and rep.last_checksum == cp.checksum.hex():
                return None
        return f"no archive that verifies ends with event {anc.id} and the signed checksum"
    # Walk from the archive holding the signed event to the one ending at the anchor.
    pos, link = cp.event_id, None
    seen = 0
    while pos < anc.id:
        step = [h for h in heads if h[0] - 1 <= pos < h[1]]  # holds event pos + 1
        if not step:
            return f"no archive holds the events after event {pos}"
        first, last, p = max(step, key=lambda h: h[1])
        rep = verify_export(p)
        if not rep.ok:
            return f"archive {p} does not verify ({rep.fault}: {rep.message})"
        if link is None:
            ck = _checksum_in_archive(p, cp.event_id, read_export)
            if ck != cp.checksum:
                return (f"archive {p} does not hold event {cp.event_id} with the checksum the "
                        "checkpoint signs")
        elif rep.prev_checksum != link or first != pos + 1:
            return f"archive {p} does not continue the archive before it"
        pos, link = last, rep.last_checksum
        seen += 1
        if seen > len(heads):
            return "the archives do not form a chain"
    if pos != anc.id or link != anc.checksum.hex():
        return (f"the archives end at event {pos}, not with the anchor's event {anc.id} and "
                "checksum")
    return None


def _checksum_in_archive(path: str, id_: int, read_export: Any) -> Optional[bytes]:
    header, _fmt, records = read_export(path)
    try:
        if header and int(header.get("first_id", 0)) - 1 == id_:
            return bytes.fromhex(header.get("prev_checksum", ""))
        for _n, rec in records:
            if rec.get("id") == id_:
                return bytes.fromhex(rec.get("checksum", ""))
    except (ValueError, TypeError):
        return None
    finally:
        if hasattr(records, "close"):
            records.close()
    return None
