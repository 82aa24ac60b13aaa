"""Counting a driver's instructions with ``valgrind --tool=callgrind`` (shared by
bench/audit_callgrind.py and bench/dbapi_callgrind.py).

A driver script runs itself again under callgrind with ``--drive ARGS...``; the total
instruction count (``Ir``) callgrind reports is the figure. Times move with whatever else
the shared machine runs; instruction counts repeat.
"""
from __future__ import annotations

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
