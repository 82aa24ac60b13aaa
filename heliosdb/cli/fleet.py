"""``heliosdb fleet-verify DIR``: verify a fleet's Parquet audit dataset on arrival.

::

    heliosdb fleet-verify DIR [--jobs N] [--json]

For each ``database_id=`` of the dataset (``docs/EXPORT_FORMAT.md``, "Parquet datasets"),
prints a table of its parts (first/last id, events, status), then its totals: events,
first/last id, gaps, faults. Each fault names the database and the event id. Exit status
as ``heliosdb verify``: 0 when every database verifies, 1 on a fault, 2 for a usage or
input error (no such directory, no dataset, pyarrow missing). The work is done by
:mod:`heliosdb.audit.fleet`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from .common import CLIError, EXIT_FAILED, EXIT_OK

__all__ = ["add_parser", "cmd_fleet_verify", "format_fleet_report"]


def add_parser(sub: Any) -> None:
    """Register ``fleet-verify`` on the subcommand parsers."""
    p = sub.add_parser("fleet-verify", help="verify a Parquet audit dataset of many "
                       "databases (exit 1 on a fault)",
                       description="Verify every database's audit chain across all its "
                                   "parts in a Parquet dataset (continuity between parts, "
                                   "each part's proof, the latest checkpoint); print a table "
                                   "per database.",
                       epilog="Exit status: 0 all verify, 1 a fault, 2 usage or input error.")
    p.add_argument("dir", metavar="DIR", help="the dataset directory (database_id=.../)")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="check N databases at a time, in processes (default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_fleet_verify)


def _range(a: Any, b: Any) -> str:
    return "-" if a is None else f"{a}..{b}"


def format_fleet_report(rep: Any) -> str:
    """The text of ``heliosdb fleet-verify``: a table per database, then a summary."""
    out: list[str] = []
    for d in rep.databases:
        out.append(f"database {d.database_id}: {'OK' if d.ok else 'FAULT'}")
        prefix = f"database_id={d.database_id}{os.sep}"
        rows = [("part", "first", "last", "events", "status")]
        for p in d.parts:
            name = p.path[len(prefix):] if p.path.startswith(prefix) else p.path
            rows.append((name, "-" if p.first_id is None else str(p.first_id),
                         "-" if p.last_id is None else str(p.last_id), str(p.events),
                         p.fault or "ok"))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            out.append(f"  {r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  "
                       f"{r[4]}".rstrip())
        gaps = ", ".join(_range(a, b) for a, b in d.gaps) or "none"
        out.append(f"  {d.events} event(s) verified, ids {_range(d.first_id, d.last_id)}, "
                   f"gaps {gaps}, "
                   f"faults {len(d.faults) or 'none'}"
                   + (f", checkpoint {d.checkpoint}" if d.checkpoint else ""))
        for f in d.faults:
            at = f" at event {f.event_id}" if f.event_id is not None else ""
            out.append(f"  FAULT {f.kind}{at}: {f.message}")
    bad = sum(1 for d in rep.databases if not d.ok)
    events = sum(d.events for d in rep.databases)
    out.append(f"fleet: {len(rep.databases)} database(s), {events} event(s): "
               + ("all verified" if rep.ok else f"{bad} with faults"))
    return "\n".join(out)


def cmd_fleet_verify(args: argparse.Namespace) -> int:
    from ..audit.fleet import verify_fleet
    from ..errors import ProgrammingError

    if not os.path.isdir(args.dir):
        raise CLIError(f"{args.dir}: no such directory")
    if args.jobs < 1:
        raise CLIError("--jobs must be at least 1")
    try:
        rep = verify_fleet(args.dir, jobs=args.jobs)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    except ProgrammingError as exc:
        raise CLIError(str(exc)) from None
    if not rep.databases:
        raise CLIError(f"{args.dir}: no database_id=... directories: not a HeliosDB "
                       "Parquet audit dataset")
    if args.json:
        sys.stdout.write(json.dumps({"ok": rep.ok, "root": rep.root,
                                     "databases": [dict(asdict(d), ok=d.ok)
                                                   for d in rep.databases]},
                                    indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_fleet_report(rep) + "\n")
    return EXIT_OK if rep.ok else EXIT_FAILED
