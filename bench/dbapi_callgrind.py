"""Instructions per statement of the plain DB-API path, measured with ``valgrind --tool=callgrind``.

    .venv/bin/python bench/dbapi_callgrind.py [--n 1000] [--engines a,b] [--workloads a,b]
    .venv/bin/python bench/dbapi_callgrind.py --time [--reps 5]   (timed instead, no valgrind)
    make bench-dbapi

Issue 17 item 4: ``import heliosdb as sqlite3`` must never be slower than the stdlib
``sqlite3`` module of the running Python. Timed ratios (bench/run.py) move with whatever
else the shared machine runs; instruction counts do not. As in bench/audit_callgrind.py,
each engine and workload runs in a small driver under callgrind twice, with N and with 2N
units of work, and the figure is the difference of the two totals divided by N: start-up
(interpreter, imports, open, schema, pre-fill) is the same in both runs and cancels out.

Engines: ``sqlite3`` (the stdlib module of this interpreter), ``apsw`` (plain APSW, the
floor: no DB-API at all) and ``heliosdb`` (plain: neither encrypted nor audited). Every
statement goes through ``conn.execute`` (a new cursor per statement), as bench/worker.py
does, except in ``single-cursor`` (one cursor reused, the other common pattern). Workloads (table ``t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL)``, WAL,
synchronous=NORMAL):

  single         single-row INSERT, transactions of 1,000 opened by the DB-API's implicit
                 BEGIN and ended by ``commit()`` (the default isolation_level)
  single-explicit  the same with isolation_level=None and BEGIN / COMMIT statements (W5)
  single-cursor  ``single`` through one cursor's ``execute``, made once
  single-list    ``single`` with each row's parameters in a list
  single-dict    ``single`` with named parameters (:id, :a, :b, :c) from a dict
  many           executemany of 1,000 rows per call, one transaction per call (W5m, W1);
                 figure per row
  update         UPDATE t SET a = a + 1 WHERE id = ?, implicit BEGIN, commit() every 1,000
  update-explicit  the same with BEGIN / COMMIT statements (W5u)
  select         SELECT a, b, c FROM t WHERE id = ? then fetchone() (W3, W3s, W3c)
  select-cursor  ``select`` through one cursor's ``execute``, made once
  w3             bench/worker.py's W3: the point SELECT of ``select`` (then fetchone())
                 on a database of 200,000 rows in rollback-journal mode, random ids over
                 all of them, the default cache (most reads miss it: page reads)
  w3s            W3s: the same with cache_size=-256
  w3c            W3c: the same reads within the first 2,000 rows (a working set the
                 cache holds). The three open a copy of one database file, built once
                 outside valgrind (the per-statement figure of a page read leaves out
                 the system call itself, which callgrind does not count)
  scan           ``for row in conn.execute("SELECT * FROM t")`` over 1,000 rows; per row
  open           connect, ``SELECT count(*) FROM sqlite_master``, fetchall, close (W7);
                 figure per open (N / 10 opens)

APSW has no implicit BEGIN: its ``single`` and ``update`` are the explicit ones. Prints a
markdown table and writes it to bench/results/dbapi_callgrind.md (``--time``: to
bench/results/dbapi_time.md).
"""
from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind as _callgrind  # noqa: E402  (bench/callgrind.py)

ENGINES = ("sqlite3", "apsw", "heliosdb")
WORKLOADS = ("single", "single-explicit", "single-cursor", "single-list", "single-dict",
             "many", "update", "update-explicit", "select", "select-cursor", "w3", "w3s",
             "w3c", "scan", "open")
W3_ROWS = 200_000  # bench/worker.py's full size
W3_HOT = 2000  # W3c's working set
BATCH = 1000
RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      "dbapi_callgrind.md")
TIME_RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           "dbapi_time.md")
SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL)"
INS = "INSERT INTO t(id, a, b, c) VALUES (?, ?, ?, ?)"
INS_NAMED = "INSERT INTO t(id, a, b, c) VALUES (:id, :a, :b, :c)"
UPD = "UPDATE t SET a = a + 1 WHERE id = ?"
SEL = "SELECT a, b, c FROM t WHERE id = ?"
SCAN = "SELECT * FROM t"
# Units of work per N: an open costs about as much as a few hundred statements.
SCALE = {"open": 0.1}


def _rows(start: int, stop: int) -> list:
    rnd = random.Random(start)
    return [(i, rnd.randrange(1 << 30), "x" * rnd.randrange(40, 80), rnd.random())
            for i in range(start, stop)]


def _connect(engine: str, path: str, explicit: bool):
    if engine == "apsw":
        import apsw
        return apsw.Connection(path)
    if engine == "sqlite3":
        import sqlite3 as mod
    else:
        import heliosdb as mod
    if explicit:
        return mod.connect(path, isolation_level=None)
    return mod.connect(path)


def _w3_fixture() -> str:
    """The W3 database (W3_ROWS rows, rollback journal), built once, with stdlib sqlite3
    and outside valgrind: every engine and run opens a copy of the same file."""
    path = os.path.join(tempfile.gettempdir(), f"dbapi_callgrind_w3_{W3_ROWS}.sqlite")
    if not os.path.exists(path):
        import sqlite3
        tmp = path + f".{os.getpid()}.tmp"
        conn = sqlite3.connect(tmp)
        conn.execute(SCHEMA)
        for s in range(1, W3_ROWS + 1, 10_000):
            conn.executemany(INS, _rows(s, min(s + 10_000, W3_ROWS + 1)))
        conn.commit()
        conn.close()
        os.replace(tmp, path)
    return path


def _prefill(engine: str, conn, rows: int) -> None:
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    if rows:
        if engine == "apsw":
            with conn:
                conn.executemany(INS, _rows(1, rows + 1))
        else:
            conn.executemany(INS, _rows(1, rows + 1))
            conn.commit()


def drive(engine: str, workload: str, n: int, prefill: int) -> float:
    """Run ``n`` units of ``workload`` on a fresh database; returns the seconds the
    workload itself took (start-up, open and pre-fill excluded)."""
    d = tempfile.mkdtemp(prefix="dbapi_callgrind_")
    try:
        path = os.path.join(d, "db.sqlite")
        explicit = workload.endswith("-explicit") or engine == "apsw"
        base = workload.replace("-explicit", "").replace("-cursor", "")
        base = base.replace("-list", "").replace("-dict", "")
        if base.startswith("w3"):
            shutil.copyfile(_w3_fixture(), path)
            conn = _connect(engine, path, explicit)
            if base == "w3s":
                conn.execute("PRAGMA cache_size=-256")
        else:
            conn = _connect(engine, path, explicit)
            _prefill(engine, conn, prefill if base in ("update", "select", "open") else
                     BATCH if base == "scan" else 0)
        ex = conn.cursor().execute if workload.endswith("-cursor") else conn.execute
        if base == "open":
            conn.close()
        pc = time.perf_counter
        if base == "single":
            data = _rows(prefill + 1, prefill + 1 + n)
            sql = INS
            if workload.endswith("-list"):
                data = [list(row) for row in data]
            elif workload.endswith("-dict"):
                data = [dict(zip(("id", "a", "b", "c"), row)) for row in data]
                sql = INS_NAMED
            t0 = pc()
            for s in range(0, n, BATCH):
                if explicit:
                    ex("BEGIN")
                for row in data[s:s + BATCH]:
                    ex(sql, row)
                if explicit:
                    ex("COMMIT")
                else:
                    conn.commit()
        elif base == "many":
            data = _rows(prefill + 1, prefill + 1 + n)
            t0 = pc()
            for s in range(0, n, BATCH):
                if engine == "apsw":
                    ex("BEGIN")
                    conn.executemany(INS, data[s:s + BATCH])
                    ex("COMMIT")
                else:
                    conn.executemany(INS, data[s:s + BATCH])
                    conn.commit()
        elif base == "update":
            rnd = random.Random(5)  # (one generator: seeding one per id cost 25k Ir each)
            ids = [rnd.randrange(1, prefill + 1) for _ in range(n)]
            t0 = pc()
            for s in range(0, n, BATCH):
                if explicit:
                    ex("BEGIN")
                for i in ids[s:s + BATCH]:
                    ex(UPD, (i,))
                if explicit:
                    ex("COMMIT")
                else:
                    conn.commit()
        elif base == "select":
            rnd = random.Random(3)
            ids = [rnd.randrange(1, prefill + 1) for _ in range(n)]
            t0 = pc()
            for i in ids:
                ex(SEL, (i,)).fetchone()
        elif base.startswith("w3"):
            rnd = random.Random(3)
            top = W3_HOT if base == "w3c" else W3_ROWS
            ids = [rnd.randrange(1, top + 1) for _ in range(n)]
            t0 = pc()
            for i in ids:
                ex(SEL, (i,)).fetchone()
        elif base == "scan":
            t0 = pc()
            for _ in range(0, n, BATCH):
                for _row in ex(SCAN):
                    pass
        elif base == "open":
            t0 = pc()
            for _ in range(n):
                c = _connect(engine, path, explicit)
                c.execute("SELECT count(*) FROM sqlite_master").fetchall()
                c.close()
        else:
            raise SystemExit(f"unknown workload {workload!r}: one of {', '.join(WORKLOADS)}")
        dt = pc() - t0
        if base != "open":
            conn.close()
        return dt
    finally:
        shutil.rmtree(d, ignore_errors=True)


def instructions(engine: str, workload: str, n: int, prefill: int) -> int:
    """Total instructions (callgrind ``Ir``) of one driver process running ``n`` units."""
    return _callgrind.instructions(__file__, engine, workload, n, prefill)


def _units(workload: str, n: int) -> int:
    return max(1, int(n * SCALE.get(workload, 1)))


def per_unit(engine: str, workload: str, n: int) -> float:
    """Instructions per statement (per row for ``many`` and ``scan``, per open for
    ``open``): (Ir(2n) - Ir(n)) / n."""
    n = _units(workload, n)
    prefill = 2 * max(n, BATCH)
    if workload.startswith("w3"):
        _w3_fixture()  # built here, not inside either of the measured runs
    return (instructions(engine, workload, 2 * n, prefill)
            - instructions(engine, workload, n, prefill)) / n


def timed(engine: str, workload: str, n: int, reps: int) -> float:
    """Median seconds per unit over ``reps`` fresh processes (no valgrind)."""
    n = _units(workload, n)
    prefill = 2 * max(n, BATCH)
    if workload.startswith("w3"):
        _w3_fixture()
    times = []
    for _ in range(reps):
        cmd = [sys.executable, os.path.abspath(__file__), "--drive", engine, workload,
               str(n), str(prefill)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        times.append(float(proc.stdout.split()[-1]) / n)
    return statistics.median(times)


def table(results: dict, engines: list, workloads: list, n: int, what: str) -> str:
    """The results as a markdown table, with heliosdb's ratio to the others."""
    head = ["workload"] + engines
    others = [b for b in ("sqlite3", "apsw") if b in engines]
    if "heliosdb" in engines:
        head += [f"heliosdb / {b}" for b in others]
    if what == "Ir":
        title = (f"Instructions per statement (callgrind Ir, (Ir(2N) - Ir(N)) / N, N = {n:,}; "
                 "`many`, `scan`: per row; `open`: per open, N / 10)")
    else:
        title = (f"Time per statement in us (median of fresh processes, N = {n:,}; `many`, "
                 f"`scan`: per row; `open`: per open, N / 10), Python {sys.version.split()[0]}")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in workloads:
        r = results[w]
        fmt = "{:,.0f}" if what == "Ir" else "{:,.3f}"
        cells = [w] + [fmt.format(r[e] if what == "Ir" else r[e] * 1e6) for e in engines]
        if "heliosdb" in engines:
            cells += [f"{r['heliosdb'] / r[b]:.2f}x" for b in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure every engine on every workload and print / write the table."""
    ap = _callgrind.arguments(__doc__, ENGINES, WORKLOADS, None)
    ap.add_argument("--time", action="store_true",
                    help="time fresh processes instead of counting instructions")
    ap.add_argument("--reps", type=int, default=5, help="--time: processes per cell")
    a = ap.parse_args()
    if a.drive:
        print(drive(a.drive[0], a.drive[1], int(a.drive[2]), int(a.drive[3])))
        return
    if not a.time and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    engines, workloads = a.engines.split(","), a.workloads.split(",")
    results: dict = {}
    for w in workloads:
        for e in engines:
            if e == "apsw" and w.endswith("-explicit") and w[:-9] in results.get(w[:-9], {}):
                results.setdefault(w, {})[e] = results[w[:-9]]["apsw"]  # the same run
            elif a.time:
                results.setdefault(w, {})[e] = timed(e, w, a.n, a.reps)
            else:
                results.setdefault(w, {})[e] = per_unit(e, w, a.n)
            v = results[w][e]
            print(f"{w:16} {e:10} " + (f"{v * 1e6:10.3f} us" if a.time else
                                       f"{v:12,.0f} Ir per statement"), flush=True)
    text = table(results, engines, workloads, a.n, "s" if a.time else "Ir")
    print()
    print(text)
    out = a.out if a.out is not None else (TIME_RESULT if a.time else RESULT)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
