"""Verify a fleet's Parquet audit dataset on arrival (``heliosdb fleet-verify DIR``).

A dataset (``docs/EXPORT_FORMAT.md``, "Parquet datasets") holds, per ``database_id``, the
parts exported by one database. For each database, :func:`verify_database` orders its
parts by their proof metadata (first id) and checks

* each part on its own with :func:`heliosdb.audit.export.verify_export`: every checksum
  recomputed from the row's fields (:func:`heliosdb.audit.events.encode_event`), ids
  consecutive, each ``prev_hash`` the previous checksum, the part's proof (range, count,
  ``prev_checksum``, ``last_checksum``) and its embedded signed checkpoint;
* continuity between parts (``previous=``): the first event of a part follows the last of
  the part before, and its ``prev_checksum`` is that part's ``last_checksum``;
* that the part belongs where it lies (its ``database_id`` is its directory's), and that
  the latest signed checkpoint does not sign an event beyond the dataset's end.

Nothing here hashes: the chain is recomputed by the export verifier, as for every export.
Databases are checked in parallel (processes) when ``jobs`` > 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from ..errors import ProgrammingError

__all__ = ["Fault", "PartResult", "DatabaseReport", "FleetReport", "find_databases",
           "verify_database", "verify_fleet"]


@dataclass(frozen=True)
class Fault:
    """One finding: ``kind`` (``gap``, ``broken_link``, ``overlap``, ``modified``, ``reordered``,
    ``inserted``, ``deleted``, ``malformed``, ``misfiled``, ``checkpoint_mismatch``, ...,
    the faults of :class:`heliosdb.audit.export.ExportReport` plus those of the fleet), the
    database, the event id it names (None if none) and the part."""

    database_id: str
    kind: str
    event_id: Optional[int]
    part: Optional[str]
    message: str


@dataclass(frozen=True)
class PartResult:
    path: str
    first_id: Optional[int]
    last_id: Optional[int]
    events: int
    fault: Optional[str]


@dataclass
class DatabaseReport:
    """What one database's parts hold and what is wrong with them."""

    database_id: str
    parts: list = field(default_factory=list)       # PartResult, in id order
    events: int = 0
    first_id: Optional[int] = None
    last_id: Optional[int] = None
    gaps: list = field(default_factory=list)        # (first missing id, last missing id)
    faults: list = field(default_factory=list)      # Fault
    checkpoint: Optional[str] = None                # "#seq (event N)" of the latest

    @property
    def ok(self) -> bool:
        return not self.faults


@dataclass
class FleetReport:
    root: str
    databases: list = field(default_factory=list)   # DatabaseReport, by database_id

    @property
    def ok(self) -> bool:
        return bool(self.databases) and all(d.ok for d in self.databases)

    @property
    def faults(self) -> list:
        return [f for d in self.databases for f in d.faults]


def find_databases(root: Union[str, os.PathLike]) -> dict[str, list[str]]:
    """``{database_id: [part paths]}`` of a dataset directory (Hive layout)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ProgrammingError(f"{root}: not a directory")
    out: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not (entry.is_dir() and entry.name.startswith("database_id=")):
            continue
        dbid = entry.name.split("=", 1)[1]
        paths = []
        for d, _dirs, files in os.walk(entry.path):
            paths += [os.path.join(d, f) for f in files if f.endswith(".parquet")]
        out[dbid] = sorted(paths)
    return out


def verify_database(database_id: str, paths: list, root: str = "") -> DatabaseReport:
    """Check one database's parts (see the module docstring)."""
    from .export import verify_export
    from .parquet import part_header

    rep = DatabaseReport(database_id)

    def rel(p: str) -> str:
        return os.path.relpath(p, root) if root else p

    def fault(kind: str, event_id: Optional[int], part: Optional[str], msg: str) -> None:
        rep.faults.append(Fault(database_id, kind, event_id, part and rel(part),
                                f"database {database_id}: {msg}"))

    heads = []
    latest = None  # the signed checkpoint of highest seq seen in the parts
    for p in paths:
        try:
            h = part_header(p)
        except ProgrammingError as exc:
            fault("malformed", None, p, str(exc))
            rep.parts.append(PartResult(rel(p), None, None, 0, "malformed"))
            continue
        if h["database_id"] != database_id:
            fault("misfiled", h["first_id"], p, f"part {rel(p)} holds events of database "
                  f"{h['database_id']}, not of the directory's")
        heads.append((h["first_id"], h["last_id"], p, h))
        if h.get("checkpoint"):
            from .checkpoint import Checkpoint
            try:
                cp = Checkpoint.from_text(h["checkpoint"]["text"])
            except ProgrammingError:
                cp = None  # verify_export reports it for the part
            if cp is not None and (latest is None or cp.seq > latest.seq):
                latest = cp
    heads.sort(key=lambda t: (t[0], t[1], t[2]))
    prev: Optional[dict] = None
    for first, last, p, h in heads:
        r = verify_export(p, previous=prev)
        if r.ok:
            rep.events += r.events_checked
            rep.parts.append(PartResult(rel(p), first, last, r.events_checked, None))
            prev = {"last_id": r.last_id, "last_checksum": r.last_checksum}
            continue
        if r.fault == "gap" and prev is not None and first > prev["last_id"] + 1:
            # the part itself verified: count it, name the missing ids, go on
            lo, hi = prev["last_id"] + 1, first - 1
            rep.gaps.append((lo, hi))
            fault("gap", lo, p, f"events {lo}..{hi} are in no part (the dataset goes from "
                  f"event {lo - 1} to event {first}, {rel(p)})")
            rep.events += r.events_checked
            rep.parts.append(PartResult(rel(p), first, last, r.events_checked, "gap"))
            prev = {"last_id": r.last_id, "last_checksum": r.last_checksum}
            continue
        if r.fault == "gap" and prev is not None and first == prev["last_id"] + 1:
            # the ids follow, the checksums do not: a part before was rewritten
            fault("broken_link", first, p, f"event {first}'s prev_checksum is not the "
                  f"checksum of event {first - 1} in the part before: the chain does not "
                  f"continue (an earlier part was rewritten, or {rel(p)} was)")
            rep.events += r.events_checked
            rep.parts.append(PartResult(rel(p), first, last, r.events_checked,
                                        "broken_link"))
            prev = {"last_id": r.last_id, "last_checksum": r.last_checksum}
            continue
        if r.fault == "overlap":
            fault("overlap", first, p, f"part {rel(p)} (events {first}..{last}) repeats "
                  f"events up to {prev['last_id']} of an earlier part: a duplicated or "
                  "reordered part")
            rep.parts.append(PartResult(rel(p), first, last, r.events_checked, "overlap"))
            if last > prev["last_id"]:  # continue from its end (its own chain verified)
                rep.events += last - prev["last_id"]
                prev = {"last_id": r.last_id, "last_checksum": r.last_checksum}
            continue
        bad = r.first_bad_id
        if r.message.startswith("line "):  # a part has rows, not lines
            r = replace(r, message="row " + r.message[5:])
        if r.fault == "deleted":
            moved = _out_of_order(p, first, last)
            if moved is not None:  # every id is there, in the wrong order
                fault("reordered", moved[0], p, f"event {moved[1]} stands where event "
                      f"{moved[0]} belongs: records were reordered ({rel(p)})")
                rep.parts.append(PartResult(rel(p), first, last, r.events_checked,
                                            "reordered"))
                prev = {"last_id": last, "last_checksum": h["last_checksum"]}
                continue
        fault(r.fault or "fault", bad, p, f"event {bad}: {r.message} ({rel(p)})"
              if bad is not None else f"{r.message} ({rel(p)})")
        rep.parts.append(PartResult(rel(p), first, last, r.events_checked, r.fault))
        # go on from what the part's proof announces, so later parts are still checked
        prev = {"last_id": last, "last_checksum": h["last_checksum"]}
    good = [x for x in rep.parts if x.first_id is not None]
    if good:
        rep.first_id = min(x.first_id for x in good)
        rep.last_id = max(x.last_id for x in good)
    if latest is not None:
        rep.checkpoint = f"#{latest.seq} (event {latest.event_id})"
        if rep.last_id is not None and latest.event_id > rep.last_id:
            lo, hi = rep.last_id + 1, latest.event_id
            rep.gaps.append((lo, hi))
            fault("gap", lo, None, f"checkpoint #{latest.seq} signs event {hi}, but the "
                  f"dataset ends at event {rep.last_id}: events {lo}..{hi} are missing")
    if not paths:
        fault("malformed", None, None, "no parts")
    return rep


def _out_of_order(path: str, first: int, last: int) -> Optional[tuple[int, int]]:
    """(expected id, id found) at the first misplaced row when a part holds exactly the
    ids ``first..last`` in another order; None otherwise."""
    from .parquet import require_pyarrow

    _pa, pq = require_pyarrow()
    try:
        ids = pq.read_table(path, columns=["id"], partitioning=None).column("id").to_pylist()
    except Exception:  # noqa: BLE001 - unreadable: the verifier's fault stands
        return None
    if sorted(ids) != list(range(first, last + 1)):
        return None
    for i, v in enumerate(ids):
        if v != first + i:
            return first + i, v
    return None


def _one(args: tuple) -> DatabaseReport:
    return verify_database(*args)


def verify_fleet(root: Union[str, os.PathLike], *, jobs: int = 1) -> FleetReport:
    """Verify every database of the dataset at ``root``; ``jobs`` > 1 checks databases in
    that many processes."""
    from .parquet import require_pyarrow

    require_pyarrow()
    root = os.fspath(root)
    dbs = find_databases(root)
    work = [(dbid, paths, root) for dbid, paths in dbs.items()]
    if jobs > 1 and len(work) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as ex:
            reports = list(ex.map(_one, work))
    else:
        reports = [_one(w) for w in work]
    return FleetReport(root, reports)
