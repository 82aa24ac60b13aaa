"""The audit log as a Parquet dataset (the lake format), and its parts read back.

``conn.audit.export(DIR, format="parquet")`` writes a Hive-partitioned dataset::

    DIR/database_id=<id>/date=YYYY-MM-DD/part-<first>-<last>.parquet

that DuckDB, Spark and Trino read as it is. Each part holds consecutive events of one
database and one UTC day, every column of the log (``prev_hash`` and ``checksum`` as
binary) plus ``database_id`` and an informational ``timestamp``. Its key-value metadata
carries the proof of the part (first/last id, the checksum before its first event, the
checksum of its last, the latest signed checkpoint text), the same proof the header of a
JSONL export carries, so :func:`heliosdb.audit.export.verify_export` checks a part as it
checks any export (``docs/EXPORT_FORMAT.md``, "Parquet datasets").

The header, its proof and the checkpoint are made by :mod:`heliosdb.audit.export`; this
module only lays the rows out as Parquet and reads them back. pyarrow is an optional
dependency: ``pip install heliosdb[lake]``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Iterator, Optional

from ..errors import OperationalError, ProgrammingError
from .durable import replacing
from .events import COLUMNS

__all__ = ["PARQUET_FORMAT", "LAKE_HINT", "require_pyarrow", "arrow_schema", "write_dataset",
           "part_header", "read_part", "part_name"]

#: Value of the ``heliosdb.format`` key of every part.
PARQUET_FORMAT = "heliosdb-audit-parquet/1"
LAKE_HINT = "pip install heliosdb[lake]"
#: Parts never hold more rows than this (a day of a busy log is split in several parts).
ROWS_PER_PART = 1_000_000
_TEXT = ("session_id", "user", "operation", "target", "query", "error", "metadata",
         "old_values", "new_values", "reason")
_PROOF_KEYS = ("format", "database_id", "table", "export_id", "first_id", "last_id",
               "count", "prev_checksum", "last_checksum", "checkpoint", "tree_frontier",
               "export")


def require_pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or an ImportError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"Parquet audit datasets need pyarrow, which is not installed: "
                          f"{LAKE_HINT} ({exc})") from exc
    return pa, pq


def arrow_schema(pa: Any) -> Any:
    """The Arrow schema of a part (``docs/EXPORT_FORMAT.md`` documents each column)."""
    fields = []
    for c in COLUMNS:
        if c in ("id", "ts_us", "affected_rows", "success"):
            fields.append(pa.field(c, pa.int64(), nullable=c == "affected_rows"))
        elif c in ("prev_hash", "checksum"):
            fields.append(pa.field(c, pa.binary(), nullable=False))
        else:
            fields.append(pa.field(c, pa.string(), nullable=c != "operation"))
    fields.append(pa.field("database_id", pa.string(), nullable=False))
    fields.append(pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False))
    return pa.schema(fields)


def part_name(first_id: int, last_id: int) -> str:
    return f"part-{first_id}-{last_id}.parquet"


def _day(ts_us: Any) -> str:
    if type(ts_us) is not int:
        raise OperationalError(f"an audit event has a ts_us of type {type(ts_us).__name__}: "
                               "the log was tampered with; run verify()")
    return (_dt.datetime(1970, 1, 1) + _dt.timedelta(microseconds=ts_us)).strftime("%Y-%m-%d")


def _kv(header: dict, first: int, last: int, prev_ck: bytes, last_ck: bytes,
        first_part: bool) -> dict:
    cp = header.get("checkpoint")
    kv = {
        "heliosdb.format": PARQUET_FORMAT,
        "heliosdb.database_id": header.get("database_id") or "unknown",
        "heliosdb.table": header["table"],
        "heliosdb.export_id": header["export_id"],
        "heliosdb.first_id": str(first),
        "heliosdb.last_id": str(last),
        "heliosdb.count": str(last - first + 1),
        "heliosdb.prev_checksum": prev_ck.hex(),
        "heliosdb.last_checksum": last_ck.hex(),
        # The export's own header (its whole range, time, product), for the record.
        "heliosdb.export": json.dumps({k: v for k, v in header.items()
                                       if k not in ("checkpoint", "tree_frontier")},
                                      ensure_ascii=False, separators=(",", ":")),
    }
    if cp:
        kv["heliosdb.checkpoint"] = cp["text"]
        # The Merkle frontier holds before the export's first event: only the first part
        # starts there.
        if first_part and header.get("tree_frontier") is not None:
            kv["heliosdb.tree_frontier"] = json.dumps(header["tree_frontier"])
    return kv


def write_dataset(db: Any, table_sql: str, root: str, header: dict, start: int, end: int,
                  rows_per_part: Optional[int] = None) -> list[str]:
    """Write events ``start+1 .. end`` under ``root`` as parts; return their paths.

    ``header`` is the export header made by :mod:`heliosdb.audit.export` (its
    ``prev_checksum`` is the checksum of event ``start``). Runs inside the caller's read
    transaction. Each part is written to a temporary name and renamed into place.
    """
    pa, pq = require_pyarrow()
    rows_per_part = rows_per_part or ROWS_PER_PART
    schema = arrow_schema(pa)
    dbid = header.get("database_id") or "unknown"
    base = os.path.join(root, f"database_id={dbid}")
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    written: list[str] = []
    prev = bytes.fromhex(header["prev_checksum"])
    buf: list[tuple] = []
    day: Optional[str] = None

    def flush() -> None:
        nonlocal prev
        first, last = buf[0][0], buf[-1][0]
        data = {c: [r[i] for r in buf] for i, c in enumerate(COLUMNS)}
        for c in _TEXT:  # a blob where text belongs (a tampered row): hex it, as JSONL does
            data[c] = [v.hex() if isinstance(v, (bytes, bytearray, memoryview)) else v
                       for v in data[c]]
        for c in ("prev_hash", "checksum"):
            data[c] = [bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else v
                       for v in data[c]]
        data["database_id"] = [dbid] * len(buf)
        data["timestamp"] = data["ts_us"]
        last_ck = data["checksum"][-1]
        try:
            table = pa.Table.from_pydict(data, schema=schema).replace_schema_metadata(
                _kv(header, first, last, prev, last_ck, not written))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise OperationalError(f"events {first}..{last} cannot be written as Parquet "
                                   f"({exc}): the log was tampered with; run verify()") from None
        folder = os.path.join(base, f"date={day}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, part_name(first, last))
        with replacing(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        written.append(path)
        prev = last_ck

    expect = start + 1
    for row in db.execute(f"SELECT {cols} FROM {table_sql} WHERE id > ? AND id <= ? "
                          "ORDER BY id", (start, end)):
        if row[0] != expect:
            raise OperationalError(f"event {expect} is missing from the audit log (found "
                                   f"{row[0]}): the log has a gap; run verify()")
        d = _day(row[1])
        if buf and (d != day or len(buf) >= rows_per_part):
            flush()
            buf = []
        day = d
        buf.append(row)
        expect += 1
    if buf:
        flush()
    if expect != end + 1:
        raise OperationalError(f"events {expect}..{end} are missing from the audit log: the "
                               "log has a gap; run verify()")
    return written


# --------------------------------------------------------------------------------------------
# Reading a part back (verify_export and fleet-verify)
# --------------------------------------------------------------------------------------------

def part_header(path: Any) -> dict:
    """The proof of a part as an export header (what :func:`verify_export` checks).

    Raises ProgrammingError for a Parquet file that is not a HeliosDB part."""
    _pa, pq = require_pyarrow()
    try:
        md = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not a part"
        raise ProgrammingError(f"{os.fspath(path)}: unreadable Parquet file ({exc})") from None
    kv = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in md.items()
          if k.startswith(b"heliosdb.")}
    if kv.get("heliosdb.format") != PARQUET_FORMAT:
        raise ProgrammingError(f"{os.fspath(path)}: not a HeliosDB audit part (no "
                               f"heliosdb.format = {PARQUET_FORMAT} in its metadata)")
    try:
        h: dict[str, Any] = {
            "record": "header", "export_format": "parquet",
            "export_id": kv.get("heliosdb.export_id"), "table": kv["heliosdb.table"],
            "database_id": kv["heliosdb.database_id"],
            "first_id": int(kv["heliosdb.first_id"]), "last_id": int(kv["heliosdb.last_id"]),
            "count": int(kv["heliosdb.count"]),
            "prev_checksum": kv["heliosdb.prev_checksum"],
            "last_checksum": kv["heliosdb.last_checksum"],
            "checkpoint": ({"text": kv["heliosdb.checkpoint"]}
                           if "heliosdb.checkpoint" in kv else None),
        }
        if "heliosdb.tree_frontier" in kv:
            h["tree_frontier"] = json.loads(kv["heliosdb.tree_frontier"])
    except (KeyError, ValueError) as exc:
        raise ProgrammingError(f"{os.fspath(path)}: bad proof metadata ({exc})") from None
    return h


def read_part(path: Any) -> tuple[dict, str, Iterator[tuple[int, dict]]]:
    """Open a part as :func:`heliosdb.audit.export.read_export` opens an export:
    ``(header, "parquet", iterator of (row number, record))``, hashes in hex."""
    header = part_header(path)
    return header, "parquet", _records(path, header["database_id"])


def _records(path: Any, dbid: str) -> Iterator[tuple[int, dict]]:
    from .export import MalformedExportLine

    _pa, pq = require_pyarrow()
    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(columns=[*COLUMNS, "database_id"])
    except Exception as exc:  # noqa: BLE001
        raise MalformedExportLine(1, f"cannot read the part's rows: {exc}") from None
    n = 0
    for batch in batches:
        for rec in batch.to_pylist():
            n += 1
            if rec.pop("database_id") != dbid:
                raise MalformedExportLine(n, f"row {n} (event {rec.get('id')}) names another "
                                    "database_id than the part's metadata")
            for c in ("prev_hash", "checksum"):
                v = rec[c]
                rec[c] = v.hex() if isinstance(v, bytes) else v
            yield n, rec
