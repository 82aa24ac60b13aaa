"""Incremental, resumable shipping of the audit log to where a fleet keeps it.

``conn.audit.ship(to, state=PATH)`` (and ``heliosdb ship DB --to ... --state PATH``) sends
the events that are new since the last acknowledged one, in batches, to

``parquet:DIR``
    a Parquet dataset (:mod:`heliosdb.audit.parquet`), one part per batch and day, each
    carrying its proof; ``heliosdb fleet-verify DIR`` checks what arrived.
``syslog+tcp://HOST:PORT`` / ``syslog+tls://HOST:PORT``
    a syslog collector, one RFC 5424 message per event framed by RFC 6587 octet counting,
    over TLS per RFC 5425 (:mod:`heliosdb.audit.syslog`).

Order of work per batch: read the events in a read transaction, recompute their chain
(a tampered range is refused, naming the event), hand them to the destination, and only
once the destination took them record the batch's last id and checksum in the state file
(temporary file, fsync, rename, fsync of the directory). What "took" means:

* Parquet: the part is fsynced and renamed into place. A crash before the state write
  leaves parts beyond the acknowledged event; the next run deletes them before shipping
  again, so every event lands in the dataset exactly once.
* syslog: each batch goes over a connection of its own, and counts as taken once every
  byte was sent and the collector, having read up to our end of stream, closed the
  connection cleanly (a collector that refuses the client, e.g. a TLS 1.3 client
  certificate check failing after the handshake, resets it instead: nothing is
  recorded). Syslog has no application-level acknowledgement, so that is the most it
  says: the collector read the batch, not that it stored it; and a crash after the
  close and before the state write sends the batch again. Delivery is at-least-once;
  every message carries the database id and the event id
  (``[heliosdb@32473 db=".." id=".."]``), so the receiver can drop the duplicates.

The state file also binds the run to one database, audit table and destination, and keeps
the checksum of the last shipped event: a log that was rolled back, replaced or rewritten
below that point is refused instead of being shipped as if it continued.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import apsw

from ..errors import AuditIntegrityError, ProgrammingError, translate
from .events import COLUMNS, AuditEvent, format_ts
from .durable import fsync_directory, fsync_file, replacing
from .store import anchor, get_meta, quoted

__all__ = ["STATE_FORMAT", "DEFAULT_BATCH", "Destination", "ShipState", "ShipResult",
           "parse_destination", "ship"]

STATE_FORMAT = "heliosdb-ship-state/1"
#: Events per batch (per part, per state write) unless ``batch_size=`` says otherwise.
DEFAULT_BATCH = 10_000
_SYSLOG_URL = re.compile(r"syslog\+(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(\d{1,5})/?\Z")
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet\Z")


@dataclass(frozen=True)
class Destination:
    """Where events go: ``kind`` is ``"parquet"`` (``path``) or ``"syslog"`` (``host``,
    ``port``, ``tls``); ``url`` is the canonical text recorded in the state file."""

    kind: str
    url: str
    path: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    tls: bool = False


def parse_destination(to: Union[str, os.PathLike]) -> Destination:
    """``parquet:DIR``, ``syslog+tcp://HOST:PORT`` or ``syslog+tls://HOST:PORT``."""
    text = os.fspath(to)
    if text.startswith("parquet:"):
        path = text[len("parquet:"):]
        if not path:
            raise ProgrammingError("parquet: needs a directory: parquet:DIR")
        path = os.path.abspath(path)
        return Destination("parquet", f"parquet:{path}", path=path)
    m = _SYSLOG_URL.match(text)
    if m:
        host = m.group(2).strip("[]")
        port = int(m.group(3))
        if not 0 < port < 65536:
            raise ProgrammingError(f"{text}: port {port} is out of range (1-65535)")
        return Destination("syslog", f"syslog+{m.group(1)}://{m.group(2)}:{port}", host=host,
                           port=port, tls=m.group(1) == "tls")
    raise ProgrammingError(f"unknown shipping destination {text!r}: use parquet:DIR, "
                           "syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT")


# --------------------------------------------------------------------------------------------
# The state file
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShipState:
    """What was acknowledged: the last event the destination took, and its checksum."""

    destination: str
    database_id: str
    table: str
    last_id: int
    last_checksum: str
    updated_us: int

    @classmethod
    def load(cls, path: str) -> Optional["ShipState"]:
        """The state in ``path``, or None when the file does not exist."""
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProgrammingError(f"{path}: unreadable shipping state ({exc}); it is written "
                                   "atomically, so this is not one: give another --state") \
                from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ProgrammingError(f"{path}: not a HeliosDB shipping state (no format = "
                                   f"{STATE_FORMAT})")
        try:
            return cls(str(data["destination"]), str(data["database_id"]), str(data["table"]),
                       int(data["last_id"]), str(data["last_checksum"]),
                       int(data["updated_us"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProgrammingError(f"{path}: shipping state lacks a valid {exc}") from None

    def save(self, path: str) -> None:
        """Write atomically: a temporary file, fsync, rename, fsync of the directory."""
        data = {"format": STATE_FORMAT, "destination": self.destination,
                "database_id": self.database_id, "table": self.table,
                "last_id": self.last_id, "last_checksum": self.last_checksum,
                "updated_us": self.updated_us, "updated": format_ts(self.updated_us)}
        with replacing(path) as tmp, open(tmp, "wb") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_directory(os.path.dirname(os.path.abspath(path)))


# --------------------------------------------------------------------------------------------
# Shipping
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShipResult:
    """One run of :func:`ship`: events ``first_id..last_id`` (``count`` of them, in
    ``batches`` batches) went to ``destination``; ``resumed_after`` is the last event
    acknowledged before the run (0 or the retention anchor on a first run)."""

    destination: str
    database_id: str
    resumed_after: int
    first_id: Optional[int]
    last_id: int
    count: int
    batches: int
    state: str


class _Verifier:
    """Recomputes the chain over consecutive rows; raises on the first that does not fit.

    :meth:`fast` checks a range the way ``verify`` does (one call into C per batch,
    :func:`heliosdb.audit.chain.verify_rows`); when it points at a row, :meth:`check` goes
    row by row in Python and names the fault."""

    def __init__(self, prev: bytes, next_id: int, last_ts: Optional[int], where: str) -> None:
        self.prev, self.next_id, self.last_ts, self.where = prev, next_id, last_ts, where

    def fast(self, db: apsw.Connection, table: str, start: int, end: int) -> bool:
        """True (and the chain advanced to ``end``) if events ``start+1..end`` verify."""
        from . import chain
        from .verify import split_columns, chain_walk_sql

        batch = list(db.execute(chain_walk_sql(table, "WHERE id > ? AND id <= ?"), (start, end)))
        if len(batch) != end - start or start + 1 != self.next_id:
            return False
        texts, ids, ts, rows, succ, types_ok, prevs, cks, masks = split_columns(batch)
        try:
            if 0 in types_ok:
                return False
            bad, link = chain.verify_rows(self.prev, self.next_id, self.last_ts, ids, ts,
                                          rows, succ, texts, prevs, cks, masks)
        except chain.MalformedBatch:
            return False
        if bad >= 0:
            return False
        self.prev, self.next_id, self.last_ts = link, end + 1, ts[-1]
        return True

    def check(self, row: tuple) -> None:
        id_, ts = row[0], row[1]
        problem = None
        if id_ != self.next_id:
            problem = f"event {self.next_id} is missing (found {id_})"
        elif type(ts) is not int or (self.last_ts is not None and ts <= self.last_ts):
            problem = f"event {id_}'s time is not after the previous event's"
        elif not isinstance(row[-2], bytes) or row[-2] != self.prev:
            problem = f"event {id_}'s prev_hash is not the checksum of event {id_ - 1}"
        else:
            try:
                ck = hashlib.sha256(self.prev + AuditEvent.from_row(row).encoding()).digest()
            except (TypeError, OverflowError) as exc:
                problem = f"event {id_} holds a value of the wrong type ({exc})"
            else:
                if ck != row[-1]:
                    problem = f"event {id_}'s fields do not match its checksum"
        if problem:
            bad = self.next_id if id_ != self.next_id else id_
            raise AuditIntegrityError(
                f"{self.where}: {problem}: the log was tampered with; nothing from event "
                f"{bad} on is shipped (run heliosdb verify)")
        self.prev, self.next_id, self.last_ts = row[-1], id_ + 1, ts


def _checksum_at(db: apsw.Connection, t: str, id_: int) -> Optional[tuple[bytes, int]]:
    for ck, ts in db.execute(f"SELECT checksum, ts_us FROM {t} WHERE id = ?", (id_,)):
        return (ck if isinstance(ck, bytes) else b""), ts  # not a blob: cannot match
    return None


def _parquet_leftovers(root: str, database_id: str, acked: int) -> list[str]:
    """Parts of ``database_id`` that start after ``acked``, and temporary files: what an
    interrupted run wrote before it could record it."""
    base = os.path.join(root, f"database_id={database_id}")
    out = []
    try:
        days = os.listdir(base)
    except FileNotFoundError:
        return out
    for day in days:
        folder = os.path.join(base, day)
        try:
            names = os.listdir(folder)
        except NotADirectoryError:
            continue
        for name in names:
            m = _PART.match(name)
            if (m and int(m.group(1)) > acked) or (".parquet.tmp" in name):
                out.append(os.path.join(folder, name))
    return out


def ship(session: Any, to: Union[str, os.PathLike], *, state: Union[str, os.PathLike],
         batch_size: int = DEFAULT_BATCH, body: str = "json",
         ca_file: Optional[str] = None, cert_file: Optional[str] = None,
         key_file: Optional[str] = None, server_name: Optional[str] = None,
         hostname: Optional[str] = None,
         progress: Optional[Callable[..., Any]] = None) -> ShipResult:
    """Ship the events of ``session`` (an :class:`heliosdb.audit.capture.AuditSession`)
    that are new since the state file's last acknowledged one, up to the head of the log
    when the run starts; see the module docstring. Returns a :class:`ShipResult`.

    ``body`` (syslog): ``"json"`` or ``"ocsf"``. ``ca_file``, ``cert_file``, ``key_file``,
    ``server_name`` (TLS): the CA that signs the collector's certificate, a client
    certificate and key, the name to check (default the host). ``progress(done, total)``
    is called after each acknowledged batch.
    """
    from .syslog import BODIES

    dest = parse_destination(to)
    state_path = os.path.abspath(os.fspath(state))
    if int(batch_size) < 1:
        raise ProgrammingError(f"batch_size must be at least 1 (got {batch_size})")
    if body not in BODIES:
        raise ProgrammingError(f"unknown syslog body {body!r}: use one of {BODIES}")
    if dest.kind == "parquet" and body != "json":
        raise ProgrammingError("body= applies to syslog: a Parquet dataset holds the columns")
    if dest.kind == "parquet":
        from .parquet import require_pyarrow
        require_pyarrow()
    session._require_autocommit("ship()")
    session._flush_for_read()
    db, table = session._db, session.table
    t = quoted(table)
    try:
        with session._internal():
            db.execute("BEGIN")
            try:
                dbid = get_meta(db, table, "database_id") or "unknown"
                anc = anchor(db, table)
                head_id = anc.id
                for (hid,) in db.execute(f"SELECT max(id) FROM {t}"):
                    head_id = anc.id if hid is None else hid
                st = ShipState.load(state_path)
                start, prev, last_ts = _resume_point(db, t, table, dbid, anc, head_id, st,
                                                     dest, state_path)
            finally:
                db.execute("COMMIT")
    except apsw.Error as exc:
        raise translate(exc) from None
    where = f"database {dbid}, {table}"
    if dest.kind == "parquet":
        leftovers = _parquet_leftovers(dest.path, dbid, start)
        if st is None and any(_PART.match(os.path.basename(p)) for p in leftovers):
            raise ProgrammingError(
                f"{dest.path} already holds parts of database {dbid} that no state file "
                f"records (e.g. {leftovers[0]}): give the --state that shipped them, or ship "
                "to another directory")
        for p in leftovers:
            os.unlink(p)
    if st is None:  # recorded before anything is sent, so that a crash leaves a known point
        ShipState(dest.url, dbid, table, start, prev.hex(), time.time_ns() // 1000) \
            .save(state_path)
    total = head_id - start
    if progress is not None:
        progress(0, total)
    connect = None
    if dest.kind == "syslog":
        from .syslog import SyslogSender

        def connect() -> Any:
            return SyslogSender(dest.host, dest.port, tls=dest.tls, ca_file=ca_file,
                                cert_file=cert_file, key_file=key_file,
                                server_name=server_name)
    verifier = _Verifier(prev, start + 1, last_ts, where)
    host = hostname or socket.gethostname() or "-"
    acked, batches = start, 0
    while acked < head_id:
        end = min(acked + int(batch_size), head_id)
        last_ck = _ship_batch(session, t, table, dest, verifier, acked, end, dbid, body,
                              host, connect)
        ShipState(dest.url, dbid, table, end, last_ck.hex(), time.time_ns() // 1000) \
            .save(state_path)
        acked, batches = end, batches + 1
        if progress is not None:
            progress(acked - start, total)
    return ShipResult(destination=dest.url, database_id=dbid, resumed_after=start,
                      first_id=start + 1 if acked > start else None, last_id=acked,
                      count=acked - start, batches=batches, state=state_path)


def _resume_point(db: apsw.Connection, t: str, table: str, dbid: str, anc: Any, head_id: int,
                  st: Optional[ShipState], dest: Destination,
                  state_path: str) -> tuple[int, bytes, Optional[int]]:
    """``(last acknowledged id, its checksum, its ts_us)``, checked against the log."""
    if st is None:
        return anc.id, anc.checksum, anc.ts_us
    if st.destination != dest.url:
        raise ProgrammingError(f"{state_path} records shipping to {st.destination}, not "
                               f"{dest.url}: keep one state file per destination")
    if st.database_id != dbid or st.table != table:
        raise ProgrammingError(f"{state_path} records shipping database {st.database_id} "
                               f"({st.table}), not this one ({dbid}, {table})")
    if st.last_id < anc.id:
        raise ProgrammingError(
            f"events {st.last_id + 1}..{anc.id} were purged by retention before they were "
            f"shipped (the retention archives hold them): ship those archives, then start a "
            f"new state file")
    if st.last_id > head_id:
        raise AuditIntegrityError(
            f"{state_path} says event {st.last_id} was shipped, but the log of database "
            f"{dbid} ends at event {head_id}: the database was rolled back or replaced")
    if st.last_id == anc.id:
        ck, ts = anc.checksum, anc.ts_us
    else:
        got = _checksum_at(db, t, st.last_id)
        if got is None:
            raise AuditIntegrityError(f"event {st.last_id} (the last shipped) is missing from "
                                      f"the log of database {dbid}: run heliosdb verify")
        ck, ts = got
    if ck.hex() != st.last_checksum:
        raise AuditIntegrityError(
            f"event {st.last_id} of database {dbid} no longer has the checksum it was shipped "
            f"with: the log was rewritten since (run heliosdb verify)")
    return st.last_id, bytes(ck), ts


def _ship_batch(session: Any, t: str, table: str, dest: Destination, verifier: _Verifier,
                start: int, end: int, dbid: str, body: str, host: str,
                connect: Optional[Callable[[], Any]]) -> bytes:
    """Verify events ``start+1..end`` and hand them to the destination; return the last
    checksum once the destination took them."""
    db = session._db
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    try:
        with session._internal():
            db.execute("BEGIN")
            try:
                verified = verifier.fast(db, table, start, end)
                rows: list = []
                if connect is not None or not verified:  # syslog formats the rows
                    rows = list(db.execute(f"SELECT {cols} FROM {t} WHERE id > ? AND "
                                           "id <= ? ORDER BY id", (start, end)))
                if not verified:  # row by row, naming the fault
                    for row in rows:
                        verifier.check(row)
                if verifier.next_id != end + 1:
                    raise AuditIntegrityError(
                        f"database {dbid}, {table}: events {verifier.next_id}..{end} are "
                        "missing: the log has a gap; nothing from there on is shipped "
                        "(run heliosdb verify)")
                if dest.kind == "parquet":
                    from .export import export_events
                    m = export_events(db, table, dest.path, format="parquet", after_id=start,
                                      last_id=end)
                    folders = {dest.path}
                    for p in m.header["parts"]:
                        fsync_file(p)
                        day = os.path.dirname(p)  # new names: part, date=, database_id=
                        folders.update((day, os.path.dirname(day)))
                    for d in folders:
                        fsync_directory(d)
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")
    except apsw.Error as exc:
        raise translate(exc) from None
    if connect is not None:  # one connection per batch: its clean close confirms it
        from .syslog import syslog_message
        with connect() as sender:
            sender.send(syslog_message(AuditEvent.from_row(r), dbid, body=body,
                                       hostname=host) for r in rows)
    return verifier.prev

