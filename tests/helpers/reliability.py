"""Helpers shared by the tests/test_reliability_*.py suites (issue 9).

Everything here is deterministic: payloads are derived from the row key, so a checker can
tell a value that was written from one that was not, without keeping a copy.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
from typing import Dict, Iterator, Optional, Tuple

from helpers import TESTS_DIR

KEY = bytes(range(32))
HDR = 4096          # HeliosDB header in front of SQLite's page 1 (docs/FORMAT.md)
OVERHEAD = 28       # nonce (12) + tag (16) at the end of every stored page
TAG_RE = re.compile(r"'tx(\d+)'")


def payload(k: int) -> bytes:
    """The value stored for key ``k``: 40..1539 bytes, derived from k alone."""
    size = 40 + (k * 2654435761) % 1500
    block = hashlib.sha256(b"heliosdb-rel:%d" % k).digest()
    return (block * (size // 32 + 1))[:size]


def child_env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = TESTS_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HELIOSDB_PURE", None)
    if extra:
        env.update(extra)
    return env


def run_child(code: str, *args: str, env: Optional[dict] = None, timeout: float = 120,
              cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this venv, with a timeout (a hang fails)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=child_env(env), timeout=timeout, cwd=cwd)


def died_of_signal(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode < 0 and proc.returncode != -signal.SIGKILL


# --- reading the encrypted format without the VFS -------------------------------------------

def page_size_of(path: str) -> int:
    with open(path, "rb") as f:
        head = f.read(64)
    return struct.unpack(">I", head[48:52])[0]


def main_pages(path: str) -> Iterator[Tuple[int, bytes]]:
    """(pgno, stored page) of every whole page of an encrypted main file."""
    ps = page_size_of(path)
    with open(path, "rb") as f:
        f.seek(HDR)
        pgno = 1
        while True:
            page = f.read(ps)
            if len(page) < ps:
                return
            yield pgno, page
            pgno += 1


def wal_frames(path: str, page_size: int, start: int = 0) -> Iterator[Tuple[int, int, bytes]]:
    """(offset, pgno, stored page) of every whole frame of a WAL file from ``start``
    (0 = the first frame)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        off = max(start, 32)
        f.seek(off)
        while True:
            fh = f.read(24)
            if len(fh) < 24:
                return
            page = f.read(page_size)
            if len(page) < page_size:
                return
            yield off, struct.unpack(">I", fh[:4])[0], page
            off += 24 + page_size


def nonce_of(stored_page: bytes) -> bytes:
    n = len(stored_page) - OVERHEAD
    return stored_page[n:n + 12]


def read_state(conn) -> Dict[int, Tuple[int, str, bytes]]:
    """{k: (n, tag, v)} of table t."""
    return {k: (n, tag, bytes(v)) for k, n, tag, v in
            conn.execute("SELECT k, n, tag, v FROM t ORDER BY k").fetchall()}
