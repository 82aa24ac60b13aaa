"""Exports of the audit log that carry their own proof, and their verification.

Formats (``docs/EXPORT_FORMAT.md`` is the specification):

``jsonl``
    JSON Lines: one header object (export id, range, previous checksum of the first
    event, checksum of the last, optional signed checkpoint), then one object per event
    with every stored field (text fields verbatim, hashes in hex).
``csv``
    The same records as CSV rows; NULL fields are named in a ``nulls`` column, since CSV
    cannot tell NULL from empty text.
``ocsf``
    One OCSF (Open Cybersecurity Schema Framework) *Datastore Activity* event (class 6005)
    per line for SIEMs (Splunk, Elastic, Security Lake); the stored event rides along in
    ``unmapped.heliosdb`` so that the file stays verifiable.
``syslog``
    RFC 5424 lines (facility 13, "log audit"), key fields as structured data, the stored
    event as compact JSON in MSG.
``parquet``
    A Hive-partitioned Parquet dataset (``path`` is its directory), the proof in each
    part's key-value metadata; written by :mod:`heliosdb.audit.parquet` (pyarrow).

Any of them may be gzip-compressed (``gzip=True``, or a path ending in ``.gz``).

:func:`verify_export` checks a file on its own: every checksum is recomputed from the
exported fields with :func:`heliosdb.audit.events.encode_event`, every link and id is
checked, the header's range and head must match the events, and (given the previous
export) the file must continue it without a gap.
"""
from __future__ import annotations

import csv
import functools
import re
import gzip as _gzip
import hashlib
import io
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union

import apsw

from ..errors import AuditIntegrityError, OperationalError, ProgrammingError, translate
from .events import COLUMNS, TEXT_FIELDS, AuditEvent, encode_event, format_ts
from .durable import fsync_directory
from .store import anchor, get_meta, quoted

__all__ = ["EXPORT_FORMAT", "FORMATS", "ExportManifest", "ExportReport", "export_events",
           "verify_export", "verify_export_chain", "read_export", "ocsf_event",
           "syslog_line", "event_record", "export_head", "MalformedExportLine", "hex_bytes",
           "format_ts_cached", "sd_param_escape", "printable_ascii"]

EXPORT_FORMAT = "heliosdb-audit-export/1"
FORMATS = ("jsonl", "csv", "ocsf", "syslog", "parquet")
#: Structured-data id of the syslog lines. 32473 is the private enterprise number IANA
#: reserves for documentation (RFC 5612); pass ``sd_id=`` to use your own.
SYSLOG_SD_ID = "heliosdb@32473"
OCSF_VERSION = "1.3.0"
CSV_COLUMNS = ("record", *COLUMNS, "timestamp", "nulls", "header")
_INT_COLS = ("id", "ts_us", "affected_rows", "success")
_HASH_COLS = ("prev_hash", "checksum")


@functools.lru_cache(maxsize=None)
def _product_version() -> str:
    try:
        from .._version import __version__
        return __version__
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

def hex_bytes(v: Any) -> Any:
    """A stored BLOB (checksums) as lower-case hex; any other value as it is."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    return v


def event_record(ev: AuditEvent) -> dict:
    """The exported form of one event: every stored field, hashes as hex, plus the time.

    ``timestamp`` is informational (derived from ``ts_us``); everything else is what the
    checksum covers, verbatim.
    """
    rec = {"record": "event"}
    for c in COLUMNS:
        rec[c] = hex_bytes(getattr(ev, c))
    rec["timestamp"] = format_ts(ev.ts_us) if type(ev.ts_us) is int else None
    return rec


_REC_KEYS = ("record", *COLUMNS)
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ts_cache: list = [None, ""]


def format_ts_cached(ts: int) -> str:
    """:func:`format_ts`, computed once per second of log (exports format every event)."""
    sec, us = divmod(ts, 1_000_000)
    if sec != _ts_cache[0]:
        try:
            t = time.gmtime(sec)
        except (OverflowError, OSError, ValueError):
            return format_ts(ts)
        _ts_cache[0] = sec
        _ts_cache[1] = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:"
                        f"{t.tm_min:02d}:{t.tm_sec:02d}")
    return f"{_ts_cache[1]}.{us:06d}Z"


def _row_record(row: tuple) -> dict:
    """:func:`event_record` straight from a table row (the export fast path)."""
    rec = dict(zip(_REC_KEYS, ("event", *row)))
    p, c = row[-2], row[-1]
    if type(p) is bytes and type(c) is bytes:
        rec["prev_hash"], rec["checksum"] = p.hex(), c.hex()
    else:
        rec["prev_hash"], rec["checksum"] = hex_bytes(p), hex_bytes(c)
    ts = row[1]
    rec["timestamp"] = format_ts_cached(ts) if type(ts) is int else None
    return rec


def _record_json(row: tuple) -> str:
    try:
        return _JSON.encode(_row_record(row))
    except (TypeError, ValueError):  # a blob where text belongs (a tampered row): hex it
        return _JSON.encode(event_record(AuditEvent.from_row(row)))


def _checkpoint_dict(cp: Any) -> Optional[dict]:
    if cp is None:
        return None
    if not hasattr(cp, "to_text"):
        from .checkpoint import Checkpoint
        cp = Checkpoint.load(cp)
    d = {"seq": cp.seq, "event_id": cp.event_id, "checksum": cp.checksum.hex(),
         "algorithm": cp.algorithm, "key_id": cp.key_id,
         "public_key": cp.public_key.hex() if cp.public_key else None,
         "text": cp.to_text()}
    if getattr(cp, "tree_size", None) is not None:  # version 2: the signed Merkle tree
        d["tree_size"] = cp.tree_size
        d["root_hash"] = cp.root_hash.hex()
    return d


@dataclass(frozen=True)
class ExportManifest:
    """What an export contains: its header. ``path`` is where it was written."""

    export_id: str
    path: str
    format: str
    table: str
    database_id: Optional[str]
    first_id: int
    last_id: int
    count: int
    prev_checksum: str
    last_checksum: str
    created_us: int
    gzip: bool = False
    checkpoint: Optional[dict] = None
    header: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("header")
        return d


# --------------------------------------------------------------------------------------------
# SIEM formats
# --------------------------------------------------------------------------------------------

# OCSF Datastore Activity (6005) activity ids: 1 Read, 2 Update, 3 Connect, 4 Query,
# 5 Write, 6 Create, 7 Delete, 99 Other.
_OCSF_ACTIVITY = {"SELECT": (4, "Query"), "INSERT": (6, "Create"), "UPDATE": (2, "Update"),
                  "DELETE": (7, "Delete"), "LOGIN": (3, "Connect")}


def _metadata_obj(ev: AuditEvent) -> dict:
    if not ev.metadata:
        return {}
    try:
        md = json.loads(ev.metadata)
    except ValueError:
        return {}
    return md if isinstance(md, dict) else {}


def ocsf_event(ev: AuditEvent, *, database_name: Optional[str] = None,
               export_id: Optional[str] = None) -> dict:
    """One audit event as an OCSF Datastore Activity (class 6005) event.

    ``unmapped.heliosdb`` holds the stored event (:func:`event_record`), which keeps an
    OCSF export verifiable by :func:`verify_export`.
    """
    act_id, act_name = _OCSF_ACTIVITY.get(ev.operation, (99, ev.operation))
    md = _metadata_obj(ev)
    denied = bool(isinstance(md.get("details"), dict) and md["details"].get("denied"))
    ok = ev.success == 1
    out: dict[str, Any] = {
        "class_uid": 6005, "class_name": "Datastore Activity",
        "category_uid": 6, "category_name": "Application Activity",
        "activity_id": act_id, "activity_name": act_name,
        "type_uid": 6005 * 100 + act_id,
        "type_name": f"Datastore Activity: {act_name}",
        "time": ev.ts_us // 1000 if type(ev.ts_us) is int else None,
        "time_dt": format_ts_cached(ev.ts_us) if type(ev.ts_us) is int else None,
        "severity_id": 1 if ok else 3, "severity": "Informational" if ok else "Medium",
        "status_id": 1 if ok else 2, "status": "Success" if ok else "Failure",
        "metadata": {
            "version": OCSF_VERSION, "uid": str(ev.id), "log_name": "heliosdb audit",
            "product": {"name": "HeliosDB", "vendor_name": "HeliosDB",
                        "version": _product_version()},
        },
        "actor": {"user": {"name": ev.user}, "session": {"uid": ev.session_id}},
        "database": {"name": database_name or md.get("database_name"), "type": "SQLite",
                     "type_id": 99},
        "unmapped": {"heliosdb": event_record(ev)},
    }
    if export_id:
        out["unmapped"]["heliosdb_export_id"] = export_id
    if ev.error:
        out["status_detail"] = ev.error
    if denied:
        out["disposition_id"], out["disposition"] = 2, "Blocked"
    if ev.target:
        out["table"] = {"name": ev.target.split(",", 1)[0]}
    if ev.query:
        out["query_info"] = {"query_string": ev.query}
    if md.get("client_ip"):
        out["src_endpoint"] = {"ip": md["client_ip"]}
    if md.get("application_name"):
        out["actor"]["app_name"] = md["application_name"]
    if md.get("execution_time_ms") is not None:
        out["duration"] = int(round(md["execution_time_ms"]))
    if ev.affected_rows is not None:
        out["count"] = ev.affected_rows
    return out


def sd_param_escape(v: Any) -> str:
    """An RFC 5424 SD-PARAM value: backslash, double quote and ']' escaped."""
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def printable_ascii(s: str, n: int) -> str:
    """An RFC 5424 header field: printable US-ASCII only, at most ``n`` characters, '-'
    when empty."""
    s = "".join(c if 33 <= ord(c) <= 126 else "_" for c in s)
    return s[:n] or "-"


def syslog_line(ev: AuditEvent, *, hostname: Optional[str] = None, app_name: str = "heliosdb",
                sd_id: str = SYSLOG_SD_ID, bom: bool = False) -> str:
    """One RFC 5424 syslog line (without the trailing newline) for an audit event.

    PRI: facility 13 (log audit), severity 6 (informational) for a success, 4 (warning)
    for a failure or denial. MSGID is the operation; structured data names the event and
    its chain links; MSG is the stored event as compact JSON (:func:`event_record`).
    """
    ok = ev.success == 1
    pri = 13 * 8 + (6 if ok else 4)
    host = printable_ascii(hostname or socket.gethostname() or "-", 255)
    ts = format_ts_cached(ev.ts_us) if type(ev.ts_us) is int else "-"
    params = [("id", ev.id), ("user", ev.user), ("session", ev.session_id),
              ("operation", ev.operation), ("target", ev.target), ("success", ev.success),
              ("rows", ev.affected_rows), ("prev", hex_bytes(ev.prev_hash)),
              ("checksum", hex_bytes(ev.checksum))]
    sd = "[" + sd_id + "".join(f' {k}="{sd_param_escape(v)}"' for k, v in params if v is not None) \
        + "]"
    msg = _JSON.encode(event_record(ev))
    return (f"<{pri}>1 {ts} {host} {printable_ascii(app_name, 48)} - "
            f"{printable_ascii(ev.operation, 32)} {sd} {chr(0xFEFF) if bom else ''}{msg}")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _csv_row(rec: dict) -> list:
    nulls = [c for c in COLUMNS if rec.get(c) is None]
    return ["event"] + ["" if rec.get(c) is None else rec[c] for c in COLUMNS] + \
        [rec.get("timestamp") or "", " ".join(nulls), ""]


class _Sink:
    """A text file written to a temporary name, renamed into place on success."""

    def __init__(self, path: str, compress: bool) -> None:
        self.path = path
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.raw = open(self.tmp, "wb")
        self.gz = _gzip.GzipFile(fileobj=self.raw, mode="wb", mtime=0) if compress else None
        self.text = io.TextIOWrapper(self.gz if self.gz is not None else self.raw,
                                     encoding="utf-8", newline="")

    def commit(self) -> None:
        self.text.flush()
        self.text.detach()
        if self.gz is not None:
            self.gz.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        os.replace(self.tmp, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))  # the new name too

    def abort(self) -> None:
        try:
            self.raw.close()
        finally:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


def export_events(db: apsw.Connection, table: str, path: Union[str, os.PathLike], *,
                  format: str = "jsonl", after_id: Optional[int] = None,
                  last_id: Optional[int] = None, gzip: Optional[bool] = None,
                  checkpoint: Any = None, hostname: Optional[str] = None,
                  sd_id: str = SYSLOG_SD_ID, extra_header: Optional[dict] = None,
                  now_us: Optional[int] = None) -> ExportManifest:
    """Write events ``after_id + 1 .. last_id`` of ``table`` to ``path``.

    Runs on a raw APSW connection inside the caller's transaction (or a read transaction
    of its own, so that the export is one consistent snapshot). ``after_id`` None means
    from the start of the stored chain; ``last_id`` None means up to the head. Raises
    ProgrammingError when events after ``after_id`` were purged (they are in the retention
    archives) and for a bad format.
    """
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ProgrammingError(f"unknown export format {format!r}: use one of {FORMATS}")
    path = os.fspath(path)
    compress = path.endswith(".gz") if gzip is None else bool(gzip)
    own = not db.in_transaction
    try:
        if own:
            db.execute("BEGIN")
        try:
            return _export(db, table, path, fmt, after_id, last_id, compress, checkpoint,
                           hostname, sd_id, extra_header, now_us)
        finally:
            if own and db.in_transaction:
                db.execute("COMMIT")
    except apsw.Error as exc:
        raise translate(exc) from None


def _export(db: apsw.Connection, table: str, path: str, fmt: str, after_id: Optional[int],
            last_id: Optional[int], compress: bool, checkpoint: Any, hostname: Optional[str],
            sd_id: str, extra_header: Optional[dict], now_us: Optional[int]) -> ExportManifest:
    t = quoted(table)
    anc = anchor(db, table)
    start = anc.id if after_id is None else int(after_id)
    if start < anc.id:
        raise ProgrammingError(
            f"events {start + 1}..{anc.id} were purged by retention (their archives hold "
            f"them); export after_id={anc.id} or later")
    head = None
    for row in db.execute(f"SELECT id, checksum FROM {t} ORDER BY id DESC LIMIT 1"):
        head = row
    head_id = head[0] if head else anc.id
    end = head_id if last_id is None else min(int(last_id), head_id)
    if start > head_id:
        raise ProgrammingError(f"after_id={start} is beyond the head of the log "
                               f"(event {head_id})")
    if start == anc.id:
        prev = anc.checksum
    else:
        prev = None
        for (ck,) in db.execute(f"SELECT checksum FROM {t} WHERE id = ?", (start,)):
            prev = bytes(ck)
        if prev is None:
            raise OperationalError(f"event {start} is missing from the audit log: verify it")
    last_ck = prev
    if end > start:
        for (ck,) in db.execute(f"SELECT checksum FROM {t} WHERE id = ?", (end,)):
            last_ck = bytes(ck)
    count = max(0, end - start)
    created = time.time_ns() // 1000 if now_us is None else now_us
    export_id = uuid.uuid4().hex
    if fmt == "parquet" and checkpoint is None:  # the latest signed head kept beside the log
        text = get_meta(db, table, "last_checkpoint")
        if text:
            from .checkpoint import Checkpoint
            checkpoint = Checkpoint.from_text(text)
    cp = _checkpoint_dict(checkpoint)
    header = {
        "record": "header", "format": EXPORT_FORMAT, "export_id": export_id,
        "export_format": fmt, "table": table,
        "database_id": get_meta(db, table, "database_id"),
        "first_id": start + 1, "last_id": end, "count": count,
        "prev_checksum": bytes(prev).hex(), "last_checksum": bytes(last_ck).hex(),
        "anchor_id": anc.id, "created_us": created, "created": format_ts(created),
        "encoding_version": 1, "product": f"heliosdb {_product_version()}",
        "checkpoint": cp,
    }
    if cp is not None and cp.get("tree_size") is not None:
        # The Merkle frontier before the first exported event: with the exported events it
        # reproduces the checkpoint's signed root, so a receiver checks from this file
        # alone that each event up to the checkpoint is in the signed tree.
        from . import merkle
        at = merkle.tree_at_anchor(db, table)
        if at is not None and at[0] <= start:
            try:
                size, fr = merkle.fold_stored(db, table, at[0], at[1], start)
                header["tree_frontier"] = [h.hex() for h in merkle.split_frontier(fr)]
            except AuditIntegrityError:
                pass  # a broken log: the export says nothing about the tree
    if extra_header:
        header.update(extra_header)
    if fmt == "parquet":  # a dataset directory: heliosdb/audit/parquet.py lays it out
        from .parquet import write_dataset
        parts = write_dataset(db, t, path, header, start, end)
        return ExportManifest(export_id=export_id, path=path, format=fmt, table=table,
                              database_id=header["database_id"], first_id=start + 1,
                              last_id=end, count=count, prev_checksum=header["prev_checksum"],
                              last_checksum=header["last_checksum"], created_us=created,
                              checkpoint=cp, header={**header, "parts": parts})
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    sink = _Sink(path, compress)
    try:
        out = sink.text
        if fmt == "jsonl":
            out.write(json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n")
        elif fmt == "csv":
            w = csv.writer(out, lineterminator="\r\n")
            w.writerow(CSV_COLUMNS)
            w.writerow(["header"] + [""] * (len(CSV_COLUMNS) - 2)
                       + [json.dumps(header, ensure_ascii=False, separators=(",", ":"))])
        n = 0
        write = out.write
        if fmt == "syslog" and hostname is None:
            hostname = socket.gethostname() or "-"
        for row in db.execute(f"SELECT {cols} FROM {t} WHERE id > ? AND id <= ? ORDER BY id",
                              (start, end)):
            n += 1
            if fmt == "jsonl":
                write(_record_json(row))
                write("\n")
                continue
            if fmt == "csv":
                w.writerow(_csv_row(_row_record(row)))
                continue
            ev = AuditEvent.from_row(row)
            if fmt == "ocsf":
                write(json.dumps(ocsf_event(ev, export_id=export_id), ensure_ascii=False,
                                 separators=(",", ":"), default=hex_bytes) + "\n")
            else:
                write(syslog_line(ev, hostname=hostname, sd_id=sd_id) + "\n")
        if n != count:
            raise OperationalError(f"events {start + 1}..{end} should be {count} rows, found "
                                   f"{n}: the audit log has a gap; run verify()")
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return ExportManifest(export_id=export_id, path=path, format=fmt, table=table,
                          database_id=header["database_id"], first_id=start + 1, last_id=end,
                          count=count, prev_checksum=header["prev_checksum"],
                          last_checksum=header["last_checksum"], created_us=created,
                          gzip=compress, checkpoint=cp, header=header)


# --------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------

def _open_text(path: Union[str, os.PathLike]) -> io.TextIOBase:
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(_gzip.GzipFile(fileobj=raw, mode="rb"), encoding="utf-8",
                                newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


class MalformedExportLine(Exception):
    """A line of an export file that cannot be read (``line``: its number, from 1)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


_SD = re.compile(r'-|(?:\[[^\]"\s]+(?:\s+[^=\s\]"]+="(?:[^"\\]|\\.)*")*\])+')


def _sd_end(line: str, pos: int) -> int:
    """Index just after the structured data that starts at ``line[pos]``."""
    m = _SD.match(line, pos)
    return m.end() if m else pos


def read_export(path: Union[str, os.PathLike]) -> tuple[Optional[dict], str,
                                                        Iterator[tuple[int, dict]]]:
    """Open an export: ``(header or None, format, iterator of (line number, record))``.

    Records are dicts with the :data:`heliosdb.audit.events.COLUMNS` keys as exported
    (hashes in hex). Raises ProgrammingError for a file that is not an export.
    """
    with open(path, "rb") as raw:
        if raw.read(4) == b"PAR1":  # a part of a Parquet dataset (heliosdb/audit/parquet.py)
            from .parquet import read_part
            return read_part(path)
    f = _open_text(path)
    first = f.readline()
    if not first:
        f.close()
        raise ProgrammingError(f"{os.fspath(path)}: empty file, not an audit export")
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except ValueError:
            f.close()
            raise ProgrammingError(f"{os.fspath(path)}: line 1 is not JSON") from None
        if obj.get("record") == "header":
            return obj, obj.get("export_format", "jsonl"), _jsonl_records(f, 2, None)
        if obj.get("class_uid") == 6005:
            return None, "ocsf", _jsonl_records(f, 1, first)
        return None, "jsonl", _jsonl_records(f, 1, first)
    if first.startswith("<"):
        return None, "syslog", _syslog_records(f, first)
    if first.rstrip("\r\n").split(",")[:2] == ["record", "id"]:
        rows = csv.reader(f)
        header = None
        try:
            hrow = next(rows)
        except (StopIteration, csv.Error):
            hrow = None
        if hrow and hrow[0] == "header":
            try:
                header = json.loads(hrow[-1])
            except ValueError:
                f.close()
                raise ProgrammingError(f"{os.fspath(path)}: bad CSV header record") from None
        return header, "csv", _csv_records(f, rows, hrow if header is None else None)
    f.close()
    raise ProgrammingError(f"{os.fspath(path)}: not a HeliosDB audit export")


def _jsonl_records(f: Any, lineno: int, first: Optional[str]) -> Iterator[tuple[int, dict]]:
    with f:
        lines: Iterable[str] = f if first is None else _prepend(first, f)
        for n, line in enumerate(lines, lineno):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise MalformedExportLine(n, f"line {n} is not JSON") from None
            if isinstance(obj, dict) and obj.get("class_uid") == 6005:
                obj = (obj.get("unmapped") or {}).get("heliosdb")
            if not isinstance(obj, dict) or obj.get("record", "event") != "event":
                raise MalformedExportLine(n, f"line {n} is not an event record")
            yield n, obj


def _prepend(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _syslog_records(f: Any, first: str) -> Iterator[tuple[int, dict]]:
    with f:
        for n, line in enumerate(_prepend(first, f), 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(" ", 6)
            if len(parts) < 7:
                raise MalformedExportLine(n, f"line {n} is not an RFC 5424 line")
            rest = parts[6]
            end = _sd_end(rest, 0)
            msg = rest[end:].lstrip(" ").lstrip("\ufeff")
            try:
                obj = json.loads(msg)
            except ValueError:
                raise MalformedExportLine(n, f"line {n}: MSG is not a JSON event") from None
            yield n, obj


def _csv_records(f: Any, rows: Iterator[list], pending: Optional[list]
                 ) -> Iterator[tuple[int, dict]]:
    ncol = len(CSV_COLUMNS)
    with f:
        n = 2
        if pending is not None:
            rows = _prepend(pending, rows)  # type: ignore[arg-type]
        else:
            n = 3
        try:
            for row in rows:
                if not row:
                    n += 1
                    continue
                if len(row) != ncol or row[0] != "event":
                    raise MalformedExportLine(n, f"row {n} is not an event row")
                nulls = set(row[ncol - 2].split())
                rec: dict[str, Any] = {}
                for i, c in enumerate(COLUMNS, 1):
                    v: Any = None if c in nulls else row[i]
                    if v is not None and c in _INT_COLS:
                        try:
                            v = int(v)
                        except ValueError:
                            raise MalformedExportLine(n, f"row {n}: {c} is not an integer") from None
                    rec[c] = v
                yield n, rec
                n += 1
        except csv.Error as exc:
            raise MalformedExportLine(n, f"row {n}: {exc}") from None


@dataclass(frozen=True)
class ExportReport:
    """The outcome of :func:`verify_export`. Test ``ok``; a report has no truth value.

    ``fault`` is None or one of: ``malformed`` (not parseable), ``modified`` (an event's
    fields do not match its checksum, or an event was rewritten), ``deleted`` (ids missing
    inside the file), ``inserted``/``reordered`` (an id out of sequence),
    ``time_went_backwards``, ``truncated`` (the file ends before the header's last event),
    ``header_mismatch`` (the header's range or head disagree with the events), ``gap`` /
    ``overlap`` (the file does not continue the previous export), ``checkpoint_mismatch``
    (the signed checkpoint names another checksum, the header's copies of it differ from
    its signed text, or the export does not reach its event), ``bad_signature``,
    ``no_checkpoint`` (a key was given but the export carries no checkpoint).
    """

    ok: bool
    fault: Optional[str]
    message: str
    events_checked: int
    first_bad_id: Optional[int]
    format: str
    first_id: Optional[int] = None
    last_id: Optional[int] = None
    prev_checksum: Optional[str] = None
    last_checksum: Optional[str] = None
    export_id: Optional[str] = None
    checkpoint_verified: Optional[bool] = None
    header: Optional[dict] = field(default=None, repr=False)

    def __bool__(self) -> bool:
        raise TypeError("an ExportReport has no truth value: test report.ok")


def _rec_checksum(prev: bytes, rec: dict, leaves: Optional[list] = None) -> bytes:
    texts = tuple(rec.get(c) for c in TEXT_FIELDS)
    enc = encode_event(rec["id"], rec["ts_us"], rec.get("affected_rows"), rec["success"],
                       texts)
    if leaves is not None:  # the RFC 6962 leaf hash too (see merkle.py)
        leaves.append(hashlib.sha256(b"\x00" + enc).digest())
    return hashlib.sha256(prev + enc).digest()


def export_head(previous: Any) -> tuple[int, str]:
    """(last_id, last_checksum hex) of a previous export (path, manifest, report, dict)."""
    if isinstance(previous, (str, os.PathLike)):
        previous = verify_export(previous)
        if not previous.ok:
            raise ProgrammingError(f"the previous export does not verify: {previous.message}")
    if isinstance(previous, dict):
        return int(previous["last_id"]), str(previous["last_checksum"])
    return int(previous.last_id), str(previous.last_checksum)


def verify_export(path: Union[str, os.PathLike], *, previous: Any = None,
                  public_key: Any = None, hmac_key: Optional[bytes] = None) -> ExportReport:
    """Check an exported file on its own; return an :class:`ExportReport`.

    Recomputes every event's checksum from its exported fields, checks ids (consecutive),
    links (each ``prev_hash`` is the previous checksum, the first one the header's
    ``prev_checksum``), time (strictly increasing) and the header (range, count, last
    checksum). ``previous`` (a path, :class:`ExportManifest`, :class:`ExportReport` or dict
    with ``last_id``/``last_checksum``) must be the export this one continues: a gap or an
    overlap between them is a fault. With a checkpoint in the header, the event its signed
    text names must have the checksum that text signs (the header's unsigned copies are
    only compared with it, never trusted); its signature is checked when ``public_key`` or
    ``hmac_key`` is given (never with the key embedded in the file alone), and then the
    signed event must lie in the export (or be the event just before it), and a missing
    checkpoint is the fault ``no_checkpoint``.
    """
    try:
        header, fmt, records = read_export(path)
    except ProgrammingError as exc:
        return ExportReport(False, "malformed", str(exc), 0, None, "unknown")
    except (OSError, EOFError, UnicodeDecodeError, _gzip.BadGzipFile) as exc:
        return ExportReport(False, "malformed", f"cannot read the export: {exc}", 0, None,
                            "unknown")
    checked = 0
    h = header or {}
    first_id = h.get("first_id")
    link_hex = h.get("prev_checksum")
    state = {"fmt": fmt, "h": header}

    def report(fault: Optional[str], msg: str, bad: Optional[int] = None,
               last: Optional[int] = None, last_ck: Optional[str] = None,
               cp_ok: Optional[bool] = None) -> ExportReport:
        return ExportReport(fault is None, fault, msg, checked, bad, state["fmt"],
                            first_id=first_id, last_id=last, prev_checksum=h.get(
                                "prev_checksum", first_prev), last_checksum=last_ck,
                            export_id=h.get("export_id"), checkpoint_verified=cp_ok,
                            header=header)

    first_prev: Optional[str] = link_hex
    try:
        link = bytes.fromhex(link_hex) if link_hex is not None else None
    except ValueError:
        return report("malformed", "the header's prev_checksum is not hex")
    expect = first_id
    last_ts: Optional[int] = None
    prev_rec: Optional[dict] = None
    prev_self_ok = True
    cp = h.get("checkpoint")
    cp_seen = False
    keyed = public_key is not None or hmac_key is not None
    # Every value compared with the checkpoint comes from its signed text, never from the
    # unsigned copies beside it in the header (which must agree with it anyway).
    signed = None
    if cp:
        from .checkpoint import Checkpoint
        try:
            signed = Checkpoint.from_text(cp["text"])
        except (ProgrammingError, KeyError, TypeError) as exc:
            return report("malformed", f"the header's checkpoint cannot be read: {exc}")
        copies = {"seq": signed.seq, "event_id": signed.event_id,
                  "checksum": signed.checksum.hex(), "algorithm": signed.algorithm,
                  "key_id": signed.key_id, "tree_size": signed.tree_size,
                  "root_hash": signed.root_hash.hex() if signed.root_hash else None}
        bad = [k for k, v in copies.items() if k in cp and cp[k] != v]
        if bad:
            return report("checkpoint_mismatch", f"the header's checkpoint fields "
                          f"{', '.join(bad)} differ from its signed text: the header was "
                          "altered")
        if signed.table != h.get("table", signed.table) or \
                signed.database_id != h.get("database_id", signed.database_id):
            return report("checkpoint_mismatch", f"the header's checkpoint was signed for "
                          f"table {signed.table} of database {signed.database_id}, not for "
                          "this export's log")
    # The Merkle tree (version 2 checkpoints): the header's frontier before the first event
    # (unsigned), extended by the exported events up to the signed event, must give the
    # signed root; that proves each of those events is in the signed tree.
    tree: Optional[list] = None
    tree_leaves: list = []
    if signed is not None and signed.tree_size is not None and "tree_frontier" in h:
        from . import merkle
        try:
            fr0 = b"".join(bytes.fromhex(x) for x in h["tree_frontier"])
            merkle._check_frontier(int(first_id) - 1, fr0)
            signed.check_tree()
        except (TypeError, ValueError, ProgrammingError) as exc:
            return report("malformed", f"the header's tree_frontier or the checkpoint's tree "
                          f"cannot be used: {exc}")
        tree = [int(first_id) - 1, fr0]
    try:
        for lineno, rec in records:
            try:
                rid, ts = rec["id"], rec["ts_us"]
                if type(rid) is not int or type(ts) is not int:
                    raise TypeError("id and ts_us must be integers")
                prev_b = bytes.fromhex(rec["prev_hash"])
                ck_b = bytes.fromhex(rec["checksum"])
                want_leaf = tree is not None and tree[0] + len(tree_leaves) < signed.tree_size
                calc = _rec_checksum(prev_b, rec, tree_leaves if want_leaf else None)
            except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
                return report("malformed", f"line {lineno}: event fields cannot be encoded: "
                              f"{exc}", bad=rec.get("id") if isinstance(rec, dict) else None)
            if expect is None:  # no header: the file starts the chain where it starts
                expect, link, first_id, first_prev = rid, prev_b, rid, prev_b.hex()
            self_ok = calc == ck_b
            if rid != expect:
                if rid > expect:
                    return report("deleted", f"line {lineno}: event {rid} follows event "
                                  f"{expect - 1}: events {expect}..{rid - 1} are missing",
                                  bad=expect)
                kind = "inserted" if prev_rec is not None and rid == prev_rec["id"] \
                    else "reordered"
                return report(kind, f"line {lineno}: event {rid} where event {expect} was "
                              "expected: an event was " + ("duplicated or inserted"
                                                           if kind == "inserted" else
                                                           "moved"), bad=rid)
            if prev_b != link:
                if self_ok and prev_rec is not None and prev_self_ok:
                    return report("modified", f"line {lineno}: event {rid} does not link to "
                                  f"event {rid - 1}, and both match their own checksums: "
                                  f"event {rid - 1} was rewritten and re-hashed", bad=rid - 1)
                if prev_rec is None:
                    return report("modified", f"line {lineno}: the first event (id {rid}) "
                                  "does not link to the header's prev_checksum: the event or "
                                  "the header was changed", bad=rid)
                return report("modified", f"line {lineno}: event {rid}'s prev_hash does not "
                              f"match event {rid - 1}'s checksum: it was changed", bad=rid)
            if not self_ok:
                return report("modified", f"line {lineno}: event {rid}'s fields do not match "
                              "its checksum: the line was altered", bad=rid)
            if last_ts is not None and ts <= last_ts:
                return report("time_went_backwards", f"line {lineno}: event {rid}'s time is "
                              "not after the previous event's", bad=rid)
            if signed is not None and signed.event_id == rid:
                cp_seen = True
                if signed.checksum != ck_b:
                    return report("checkpoint_mismatch", f"event {rid} does not have the "
                                  f"checksum signed in checkpoint #{signed.seq}", bad=rid)
            checked += 1
            expect, link, last_ts = rid + 1, ck_b, ts
            prev_rec, prev_self_ok = rec, self_ok
    except MalformedExportLine as exc:
        return report("malformed", str(exc), bad=expect)
    except (OSError, EOFError, UnicodeDecodeError, _gzip.BadGzipFile) as exc:
        return report("truncated" if isinstance(exc, EOFError) else "malformed",
                      f"cannot read the export to its end: {exc}", bad=expect)
    last_id = (expect - 1) if expect is not None else None
    last_ck = link.hex() if link is not None else None
    if header is not None:
        if last_id is not None and last_id < h.get("last_id", last_id):
            return report("truncated", f"the file ends at event {last_id} but its header "
                          f"announces events up to {h['last_id']}", bad=last_id + 1,
                          last=last_id, last_ck=last_ck)
        if checked != h.get("count", checked) or last_id != h.get("last_id", last_id):
            return report("header_mismatch", f"the header announces {h.get('count')} events "
                          f"ending at {h.get('last_id')}, the file holds {checked} ending at "
                          f"{last_id}", last=last_id, last_ck=last_ck)
        if last_ck != h.get("last_checksum"):
            return report("header_mismatch", "the last event's checksum differs from the "
                          "header's last_checksum: the events or the header were rewritten",
                          bad=last_id, last=last_id, last_ck=last_ck)
    if tree is not None and tree[0] <= signed.tree_size <= tree[0] + len(tree_leaves):
        from . import merkle
        _size, fr = merkle.fold(tree[0], tree[1], tree_leaves)
        if merkle.root(fr) != signed.root_hash:
            return report("checkpoint_mismatch", f"the exported events up to {signed.event_id} "
                          f"with the header's tree_frontier do not reproduce the Merkle root "
                          f"signed in checkpoint #{signed.seq}", bad=signed.event_id,
                          last=last_id, last_ck=last_ck)
    cp_ok: Optional[bool] = None
    if signed is None and keyed:
        return report("no_checkpoint", "a checkpoint key was given but the export carries no "
                      "signed checkpoint: nothing in it is signed, so it cannot be checked "
                      "against the key (export with checkpoint=)", last=last_id,
                      last_ck=last_ck, cp_ok=False)
    if signed is not None:
        if keyed:
            problem = signed.verify_signature(public_key=public_key, hmac_key=hmac_key)
            if problem is not None:
                return report("bad_signature", f"checkpoint #{signed.seq}: {problem}",
                              last=last_id, last_ck=last_ck, cp_ok=False)
        lo = first_id if first_id is not None else None
        if lo is not None and signed.event_id == lo - 1:
            if (first_prev or "") != signed.checksum.hex():
                return report("checkpoint_mismatch", f"the export starts after event "
                              f"{signed.event_id}, whose checksum signed in checkpoint "
                              f"#{signed.seq} is not the export's prev_checksum",
                              bad=signed.event_id, last=last_id, last_ck=last_ck,
                              cp_ok=False)
            cp_seen = True
        elif lo is not None and last_id is not None and lo <= signed.event_id <= last_id \
                and not cp_seen:
            return report("checkpoint_mismatch", "the checkpoint's event was not checked",
                          last=last_id, last_ck=last_ck)
        if keyed:
            if not cp_seen:
                where = (f"events {first_id}..{last_id}" if checked else "no events")
                return report("checkpoint_mismatch", f"checkpoint #{signed.seq} signs event "
                              f"{signed.event_id}, which this export ({where}) does not "
                              "reach: it proves nothing about these events", last=last_id,
                              last_ck=last_ck, cp_ok=False)
            cp_ok = True
    if previous is not None:
        p_last, p_ck = export_head(previous)
        if first_id is not None and first_id != p_last + 1:
            kind = "gap" if first_id > p_last + 1 else "overlap"
            return report(kind, f"the previous export ends at event {p_last}, this one starts "
                          f"at {first_id}: " + (f"events {p_last + 1}..{first_id - 1} are in "
                                                "no export" if kind == "gap" else
                                                "they overlap"),
                          bad=p_last + 1, last=last_id, last_ck=last_ck, cp_ok=cp_ok)
        if (first_prev or "") != p_ck:
            return report("gap", "this export's prev_checksum is not the previous export's "
                          "last checksum: the chain does not continue (a rewritten log, or "
                          "an export of another database)", bad=first_id, last=last_id,
                          last_ck=last_ck, cp_ok=cp_ok)
    where = f"events {first_id}..{last_id}" if checked else "no events"
    msg = f"{checked} event(s) verified ({where})"
    if header is None:
        msg += "; no header (OCSF/syslog/headerless file): the range and head are unchecked"
    if previous is not None:
        msg += ", continuing the previous export"
    if cp_ok and signed is not None:
        msg += f", consistent with signed checkpoint #{signed.seq} (event {signed.event_id})"
    return report(None, msg, last=last_id, last_ck=last_ck, cp_ok=cp_ok)


def _has_checkpoint(path: Union[str, os.PathLike]) -> bool:
    try:
        header, _fmt, records = read_export(path)
    except (ProgrammingError, OSError, EOFError, UnicodeDecodeError, _gzip.BadGzipFile):
        return True  # let verify_export report the unreadable file, with the key
    if hasattr(records, "close"):
        records.close()
    return bool((header or {}).get("checkpoint"))


def verify_export_chain(paths: Iterable[Union[str, os.PathLike]], **kw: Any) -> ExportReport:
    """Verify consecutive exports (or retention archives followed by exports) in order:
    each file on its own and each continuing the one before. Returns the first failing
    report, or the last one.

    With a key (``public_key=`` / ``hmac_key=``), the *last* file must carry a checkpoint
    it reaches (its signed checksum covers every file before it through the links); an
    earlier file (a retention archive has none) is checked against the key only when it
    carries one."""
    paths = list(paths)
    keyed = {k: v for k, v in kw.items() if k in ("public_key", "hmac_key")
             and v is not None}
    rest = {k: v for k, v in kw.items() if k not in ("public_key", "hmac_key")}
    prev = None
    rep: Optional[ExportReport] = None
    for n, p in enumerate(paths):
        use = keyed if (n == len(paths) - 1 or _has_checkpoint(p)) else {}
        rep = verify_export(p, previous=prev, **rest, **use)
        if not rep.ok:
            return rep
        prev = rep
    if rep is None:
        raise ProgrammingError("verify_export_chain: no files given")
    return rep



def main(argv: Optional[list] = None) -> int:
    """``python -m heliosdb.audit.export FILE...``: verify exports (in order, each
    continuing the one before); exit status 0 when all verify, 1 otherwise."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m heliosdb.audit.export",
                                 description="Verify HeliosDB audit exports and archives.")
    ap.add_argument("files", nargs="+", help="exports in chain order")
    ap.add_argument("--hmac-key-hex", help="HMAC key of the embedded checkpoint (hex)")
    ap.add_argument("--public-key-hex", help="Ed25519 public key of the checkpoint (hex)")
    args = ap.parse_args(argv)
    kw: dict[str, Any] = {}
    if args.hmac_key_hex:
        kw["hmac_key"] = bytes.fromhex(args.hmac_key_hex)
    if args.public_key_hex:
        kw["public_key"] = bytes.fromhex(args.public_key_hex)
    prev = None
    ok = True
    for f in args.files:
        rep = verify_export(f, previous=prev, **kw)
        print(f"{f}: {'OK' if rep.ok else 'FAULT ' + str(rep.fault)}: {rep.message}")
        if not rep.ok:
            ok = False
            break
        prev = rep
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in tests
    raise SystemExit(main())
