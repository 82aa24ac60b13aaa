"""Counting a driver's instructions with ``valgrind --tool=callgrind`` (shared by
bench/audit_callgrind.py and bench/dbapi_callgrind.py).

A driver script runs itself again under callgrind with ``--drive ARGS...``; the total
instruction count (``Ir``) callgrind reports is the figure. Times move with whatever else
the shared machine runs; instruction counts repeat.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(script: str, *drive_args: object) -> int:
    """Total instructions of ``python script --drive drive_args...`` under callgrind."""
    return profile(script, *drive_args, calls=False)[0]


def profile(script: str, *drive_args: object,
            calls: bool = True) -> "tuple[int, dict[tuple[str, str], int]]":
    """Total instructions of ``python script --drive drive_args...`` under callgrind, and
    (with ``calls``) the inclusive instructions of every call edge: ``(callee, caller)``
    -> instructions spent in ``callee`` (and what it called) when ``caller`` called it,
    from ``callgrind_annotate --tree=caller``. Names are bare function names
    (:func:`_bare`), so that ``sqlite3_step`` called by ``heliosdb_log_append`` can be told
    from ``sqlite3_step`` called by APSW."""
    with tempfile.TemporaryDirectory(prefix="callgrind_out_") as out:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
               sys.executable, os.path.abspath(script), "--drive",
               *(str(a) for a in drive_args)]
        # a fixed hash seed: set and dict layouts, hence the instructions, repeat run to run
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        m = _COLLECTED.search(proc.stderr)
        if proc.returncode != 0 or m is None:
            raise SystemExit(f"callgrind run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        edges: dict[tuple[str, str], int] = {}
        if calls:
            ann = subprocess.run(["callgrind_annotate", "--tree=caller", "--inclusive=yes",
                                  "--threshold=100", f"{out}/cg.out"],
                                 capture_output=True, text=True, check=True).stdout
            edges = call_edges(ann)
        return int(m.group(1)), edges


#: A line of the caller tree: cost, percentage, ``<`` (a caller) or ``*`` (the function),
#: the name, the call count of a caller, the object file.
_EDGE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+([<*])\s+(.*?)"
                   r"(?: \(([\d,]+)x\))?(?: \[.*\])?$")


def _bare(name: str) -> str:
    """``/path/file.c:merkle_fold.part.0'2`` -> ``merkle_fold``: the function's name without
    its file, the compiler's clone suffix or callgrind's recursion mark."""
    name = name.rsplit(":", 1)[-1]
    name = re.sub(r"'\d+$", "", name)
    return re.sub(r"\.(part|isra|constprop|cold)\.\d+.*$", "", name)


def call_edges(annotated: str) -> "dict[tuple[str, str], int]":
    """``(callee, caller)`` -> inclusive instructions, parsed from ``callgrind_annotate
    --tree=caller --inclusive=yes`` output: each function's block lists its callers
    (``<`` lines, the cost of the calls each made) and then the function (``*``)."""
    edges: dict[tuple[str, str], int] = {}
    callers: list[tuple[str, int]] = []
    for line in annotated.splitlines():
        m = _EDGE.match(line)
        if m is None:
            callers = [] if not line.strip() else callers
            continue
        cost, kind, name = int(m.group(1).replace(",", "")), m.group(2), _bare(m.group(3))
        if kind == "<":
            callers.append((name, cost))
            continue
        for caller, c in callers:
            edges[(name, caller)] = edges.get((name, caller), 0) + c
        # inclusive, every caller (a function can be listed twice, under two spellings of
        # its file: the same figure)
        edges[(name, "")] = max(edges.get((name, ""), 0), cost)
        callers = []
    return edges


def arguments(doc: str, engines: tuple, workloads: tuple,
              out: "str | None") -> argparse.ArgumentParser:
    """The command line both drivers share: ``--n``, ``--engines``, ``--workloads``,
    ``--out`` and the hidden ``--drive ENGINE WORKLOAD N PREFILL`` of the run under
    callgrind. ``doc``: the script's docstring (its first paragraph describes it)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="statements in the short run")
    ap.add_argument("--engines", default=",".join(engines))
    ap.add_argument("--workloads", default=",".join(workloads))
    ap.add_argument("--out", default=out, help="where to write the markdown table")
    ap.add_argument("--drive", nargs=4, metavar=("ENGINE", "WORKLOAD", "N", "PREFILL"),
                    help=argparse.SUPPRESS)
    return ap
