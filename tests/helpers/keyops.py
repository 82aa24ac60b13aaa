"""Helpers for tests/test_keyops*.py: databases with known content, dumps, and a
rotation run in a child process that the test kills with SIGKILL at a chosen moment."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
from typing import Any, List, Optional, Tuple

import apsw

from heliosdb import crypto
from heliosdb.crypto import format as fmt

from helpers import TESTS_DIR
from helpers.enc import KEY, OTHER_KEY, open_enc, q


def make_db(path: Any, key: Any = KEY, *, mode: str = "delete", rows: int = 2000,
            blob: int = 1000) -> apsw.Connection:
    """An encrypted database with tables t (rows of random blobs) and u (text + index);
    returns the open connection."""
    c = open_enc(path, key)
    q(c, f"pragma journal_mode={mode}")
    q(c, "create table t(id integer primary key, b blob, n)")
    q(c, "create table u(k text, v real)")
    q(c, "create index u_k on u(k)")
    q(c, f"with recursive r(i) as (select 1 union all select i+1 from r where i<{rows}) "
         f"insert into t(b, n) select randomblob({blob}), case when i % 7 = 0 then null "
         "else i end from r")
    q(c, "insert into u select 'k' || id, id / 3.0 from t where id % 3 = 0")
    return c


def dump(conn: apsw.Connection) -> List[Any]:
    """Schema and every row of every table, in rowid order (comparable across files)."""
    out: List[Any] = []
    schema = q(conn, "select type, name, tbl_name, sql from sqlite_master order by name")
    out.append(schema)
    for (typ, name, _t, _sql) in schema:
        if typ == "table" and not name.startswith("sqlite_"):
            out.append((name, q(conn, f'select * from "{name}" order by rowid')))
    return out


def digest(conn: apsw.Connection) -> str:
    return hashlib.sha256(repr(dump(conn)).encode()).hexdigest()


def open_any(path: Any, keys: Tuple[Any, ...] = (KEY, OTHER_KEY)) -> Tuple[apsw.Connection, int]:
    """Open with the first key in ``keys`` that works: (connection, index of the key)."""
    last: Optional[BaseException] = None
    for i, k in enumerate(keys):
        try:
            return open_enc(path, k), i
        except Exception as exc:  # WrongKeyError
            last = exc
    raise AssertionError(f"no key opens {path}: {last}")


CHILD = textwrap.dedent(r"""
    import os, sys, time
    from heliosdb.crypto import rekey
    from helpers.enc import KEY, OTHER_KEY
    path, stop_at, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rekey._STEP_PAGES = step
    n = [0]
    def event(name):
        n[0] += 1
        print("EV", n[0], name, flush=True)
        if n[0] == stop_at:
            print("WAIT", flush=True)
            sys.stdin.readline()        # the parent kills us here
    rekey._phase_hook = event
    rekey.rotate_key(path, KEY, OTHER_KEY, progress=lambda d, t: event(f"progress {d}/{t}"))
    print("DONE", flush=True)
""")


def rotate_and_kill(path: str, stop_at: int, rng: random.Random, step: int = 64) -> List[str]:
    """Run a rotation of ``path`` (KEY -> OTHER_KEY) in a child and SIGKILL it.

    ``stop_at`` > 0: the child blocks right after its ``stop_at``-th event (phase or
    progress call) and is killed there; 0: it is killed after a random short delay
    (somewhere in its run, or after it finished). Returns the events it printed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(TESTS_DIR), TESTS_DIR,
                                         env.get("PYTHONPATH", "")])
    p = subprocess.Popen([sys.executable, "-c", CHILD, path, str(stop_at), str(step)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    events: List[str] = []
    try:
        if stop_at > 0:
            assert p.stdout is not None
            for line in p.stdout:
                events.append(line.strip())
                if line.startswith(("WAIT", "DONE")):
                    break
        else:
            import time

            time.sleep(rng.uniform(0.15, 0.6))  # interpreter start-up is ~0.15 s
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        events.extend(out.splitlines())
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode not in (-signal.SIGKILL, 0):
        raise AssertionError(f"rotation child failed ({p.returncode}): {err[-2000:]}")
    return events


def header(path: Any) -> fmt.Header:
    return fmt.read_header(open(path, "rb").read(fmt.HEADER_SIZE))


def dek_of(path: Any, key: Any = KEY) -> bytearray:
    """The data key of ``path`` (tests only)."""
    h = header(path)
    dek, _ = crypto.unlock_slot(str(path), h, crypto.coerce_key(key))
    return dek


def monotonic_ending_at_total(calls: List[Tuple[int, int]]) -> bool:
    if not calls:
        return False
    totals = {t for _d, t in calls}
    dones = [d for d, _t in calls]
    return (len(totals) == 1 and dones == sorted(dones) and len(set(dones)) == len(dones)
            and dones[-1] == calls[-1][1] and all(0 <= d <= t for d, t in calls))
