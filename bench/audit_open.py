"""The cost of opening an audited connection (issue 18 item 4): one cycle is
``heliosdb.connect(path, config=...)``, the first read ``SELECT count(*) FROM
sqlite_master``, and ``close()``, on a file that exists already.

Three measurements, each of an audited file (``config="default"``: LOGIN at open, LOGOUT at
close) and of a plain, never-audited one:

* ``--statements``: the SQL statements SQLite runs per cycle (APSW's statement trace on
  every connection; heliosdb's own statements included), listed for the audited cycle.
* ``--time``: median of ``--cycles`` (300) cycles, open + first read and close timed
  separately, in ``--dirs`` (/dev/shm and /tmp, i.e. a disk: the LOGIN and LOGOUT commits
  are durable there), audited and plain alternating cycle by cycle in one process.
* ``--callgrind``: instructions per audited cycle on /dev/shm: the same script under
  ``valgrind --tool=callgrind`` (PYTHONHASHSEED=0) for K=20 and K=40 cycles; the
  difference / 20 leaves out start-up and the first, cold open.

With no option: all three. stdlib and heliosdb (and its APSW) only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import heliosdb  # noqa: E402

READ = "SELECT count(*) FROM sqlite_master"


def make_file(directory: str, audited: bool) -> str:
    """A database with one user table and ten rows (and its log when ``audited``)."""
    path = os.path.join(directory, "audited.db" if audited else "plain.db")
    for suffix in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    con = heliosdb.connect(path, config="default" if audited else None)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(str(i),) for i in range(10)])
    con.commit()
    con.close()
    return path


def cycle(path: str, audited: bool) -> tuple[int, int]:
    """One open + first read, then close: (open_ns, close_ns)."""
    cfg = "default" if audited else None
    t0 = time.perf_counter_ns()
    con = heliosdb.connect(path, config=cfg)
    con.execute(READ).fetchall()
    t1 = time.perf_counter_ns()
    con.close()
    t2 = time.perf_counter_ns()
    return t1 - t0, t2 - t1


def count_statements(directory: str) -> None:
    import apsw

    seen: list[str] = []

    def hook(db: "apsw.Connection") -> None:
        def trace(ev: dict) -> None:
            if ev.get("code") == apsw.SQLITE_TRACE_STMT:
                seen.append(ev.get("sql") or "")
        db.trace_v2(apsw.SQLITE_TRACE_STMT, trace)

    for audited in (True, False):
        path = make_file(directory, audited)
        cycle(path, audited)  # warm: the count is of a cycle like every later one
        apsw.connection_hooks.append(hook)
        try:
            seen.clear()
            cycle(path, audited)
        finally:
            apsw.connection_hooks.remove(hook)
        print(f"{'audited' if audited else 'plain'}: {len(seen)} statements per cycle")
        if audited:
            for s in seen:
                print("   ", " ".join(s.split())[:150])


def timed(dirs: list[str], cycles: int) -> None:
    print(f"median of {cycles} cycles, microseconds (audited and plain alternating)")
    print("| directory | file | open + first read | close |")
    print("|---|---|---|---|")
    for d in dirs:
        work = tempfile.mkdtemp(prefix="audit_open_", dir=d)
        try:
            paths = {a: make_file(work, a) for a in (True, False)}
            times: dict = {True: ([], []), False: ([], [])}
            for _ in range(5):  # warm-up
                for a in (True, False):
                    cycle(paths[a], a)
            for _ in range(cycles):
                for a in (True, False):
                    o, c = cycle(paths[a], a)
                    times[a][0].append(o)
                    times[a][1].append(c)
            for a in (True, False):
                o, c = (statistics.median(x) / 1000 for x in times[a])
                print(f"| {d} | {'audited' if a else 'plain'} | {o:.0f} | {c:.0f} |")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def drive(k: int) -> None:
    """What runs under callgrind: K audited cycles in /dev/shm."""
    work = tempfile.mkdtemp(prefix="audit_open_cg_", dir="/dev/shm")
    try:
        path = make_file(work, True)
        for _ in range(k):
            cycle(path, True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def callgrind(k1: int, k2: int) -> None:
    from callgrind import instructions  # bench/callgrind.py

    a = instructions(__file__, k1)
    b = instructions(__file__, k2)
    print(f"callgrind: K={k1} {a:,} / K={k2} {b:,} instructions: "
          f"{(b - a) // (k2 - k1):,} per audited open + first read + close (/dev/shm)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--statements", action="store_true")
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--dirs", default="/dev/shm,/tmp")
    ap.add_argument("--k", default="20,40", help="callgrind: the two cycle counts")
    ap.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive is not None:
        drive(args.drive)
        return
    every = not (args.statements or args.time or args.callgrind)
    if every or args.statements:
        work = tempfile.mkdtemp(prefix="audit_open_", dir="/dev/shm")
        try:
            count_statements(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if every or args.time:
        timed(args.dirs.split(","), args.cycles)
    if every or args.callgrind:
        k1, k2 = (int(x) for x in args.k.split(","))
        callgrind(k1, k2)


if __name__ == "__main__":
    main()
