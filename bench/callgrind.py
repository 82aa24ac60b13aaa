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
        return int(m.group(1))


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
