"""Audited DML hot path: plain APSW, APSW + trigger audit table, heliosdb, heliosdb audited.

    .venv/bin/python bench/audit_hotpath.py [--runs 3] [--n 50000] [--engines a,b]

Each measurement is a fresh process (WAL, synchronous=NORMAL). Workloads:
  single  N single-row INSERTs, committed every 1,000
  many    N rows by executemany, 1,000 rows per call, one commit per call
  update  N/5 UPDATE ... WHERE id = ? on a pre-filled table, committed every 1,000
--base DIR adds "audit-base": the audited engine importing heliosdb from another tree DIR
(e.g. an export of the last commit), interleaved with the others, for before/after figures.
Times are the worker's CPU time (user + sys: this machine is shared, and WAL with
synchronous=NORMAL does not wait for the disk at commit); AUDIT_HOTPATH_WALL=1 times the
wall clock instead. Prints the median of --runs runs in us per statement (per row for "many") and ratios
to plain APSW and to the trigger-based audit table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable

ENGINES = ("apsw", "apsw-trigger", "heliosdb", "heliosdb-audit")
WORKLOADS = ("single", "many", "update")
BATCH = 1000


def _open(engine: str, path: str):
    if engine.startswith("apsw"):
        import apsw
        conn = apsw.Connection(path)
        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
        return conn
    import heliosdb
    kw: dict = {"config": "default"} if engine in ("heliosdb-audit", "audit-base",
                                                   "heliosdb-enc-audit") else {}
    if engine.startswith("heliosdb-enc"):
        kw["key"] = bytes(range(32))  # a raw key: no passphrase derivation in the figures
    conn = heliosdb.connect(path, **kw)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _schema(engine: str, conn) -> None:
    sql = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, val INTEGER)"
    if engine.startswith("apsw"):
        conn.execute(sql)
        if engine == "apsw-trigger":
            conn.execute(
                "CREATE TABLE audit_log(id INTEGER PRIMARY KEY, "
                "ts TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), "
                "operation TEXT NOT NULL, target TEXT NOT NULL, row_id INTEGER)")
            for op, ref in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                conn.execute(
                    f"CREATE TRIGGER t_audit_{op.lower()} AFTER {op} ON t BEGIN "
                    f"INSERT INTO audit_log(operation, target, row_id) "
                    f"VALUES ('{op}', 't', {ref}.rowid); END")
    else:
        conn.execute(sql)
        conn.commit()


def _executemany_committed(conn, apsw_like: bool, sql: str, rows: list) -> None:
    """``executemany(sql, rows)`` as one committed transaction (apsw: ``with conn``;
    the DB-API engines: ``commit()``)."""
    if apsw_like:
        with conn:
            conn.executemany(sql, rows)
    else:
        conn.executemany(sql, rows)
        conn.commit()


def _execute_in_batches(conn, apsw_like: bool, sql: str, n: int,
                        rows_of: Callable[[int], Iterable[tuple]]) -> None:
    """``execute(sql, row)`` for the rows ``rows_of(b)`` of each batch b = 0, BATCH, ...
    below n, a batch a transaction: apsw opens and ends it with BEGIN/COMMIT, the DB-API
    engines (implicit BEGIN) end it with ``commit()``."""
    ex = conn.cursor().execute
    for b in range(0, n, BATCH):
        if apsw_like:
            ex("BEGIN")
        for row in rows_of(b):
            ex(sql, row)
        if apsw_like:
            ex("COMMIT")
        else:
            conn.commit()


def _worker(engine: str, workload: str, n: int) -> float:
    d = tempfile.mkdtemp(prefix="audit_hotpath_")
    path = os.path.join(d, "db.sqlite")
    conn = _open(engine, path)
    _schema(engine, conn)
    apsw_like = engine.startswith("apsw")
    ins = "INSERT INTO t(name, val) VALUES (?, ?)"
    if workload == "update":
        _executemany_committed(conn, apsw_like, ins, [(f"name{i}", i) for i in range(n)])
    clock = time.perf_counter if os.environ.get("AUDIT_HOTPATH_WALL") else time.process_time
    t0 = clock()
    if workload == "single":
        _execute_in_batches(conn, apsw_like, ins, n,
                            lambda b: ((f"name{i}", i) for i in range(b, b + BATCH)))
    elif workload == "many":
        for b in range(0, n, BATCH):
            _executemany_committed(conn, apsw_like, ins,
                                   [(f"name{i}", i) for i in range(b, b + BATCH)])
    elif workload == "update":
        _execute_in_batches(conn, apsw_like, "UPDATE t SET val = val + 1 WHERE id = ?", n,
                            lambda b: ((i + 1,) for i in range(b, b + BATCH)))
    dt = clock() - t0
    conn.close()
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
    return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "WORKLOAD", "N"))
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--base", help="a heliosdb tree to run as engine audit-base")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker[0], a.worker[1], int(a.worker[2]))))
        return
    engines = a.engines.split(",")
    if a.base:
        engines.append("audit-base")
    workloads = a.workloads.split(",")
    res: dict = {}
    for w in workloads:
        n = a.n // 5 if w == "update" else a.n
        for r in range(a.runs):
            order = engines if r % 2 == 0 else engines[::-1]
            for e in order:
                env = dict(os.environ)
                if e == "audit-base":
                    env["PYTHONPATH"] = os.path.abspath(a.base)
                out = subprocess.run([sys.executable, __file__, "--worker", e, w, str(n)],
                                     check=True, capture_output=True, text=True,
                                     env=env).stdout
                res.setdefault(w, {}).setdefault(e, []).append(float(out.strip()))
    med = {w: {e: statistics.median(v) for e, v in d.items()} for w, d in res.items()}
    print(f"{'workload':8} " + " ".join(f"{e:>15}" for e in engines)
          + "   audit/apsw audit/trig audit/helios")
    for w in workloads:
        m = med[w]
        line = f"{w:8} " + " ".join(f"{m[e]:12.3f} us" for e in engines)
        if "heliosdb-audit" in m:
            au = m["heliosdb-audit"]
            line += "   " + " ".join(
                f"{au / m[b]:9.2f}x" if b in m else "        -" for b in
                ("apsw", "apsw-trigger", "heliosdb"))
        print(line)
    for e in ("heliosdb-audit", "audit-base"):
        if e in med.get("single", {}):
            print(f"{e}: audited single-row statements/s {1e6 / med['single'][e]:,.0f}")
    if "audit-base" in engines:
        print("audit-base ratios (to apsw, apsw-trigger, heliosdb):")
        for w in workloads:
            m = med[w]
            print(f"{w:8} " + " ".join(f"{m['audit-base'] / m[b]:9.2f}x" for b in
                                       ("apsw", "apsw-trigger", "heliosdb") if b in m))
    print("minimum of the runs (less disturbed by other load on a shared machine):")
    for w in workloads:
        print(f"{w:8} " + " ".join(f"{min(res[w][e]):12.3f} us" for e in engines))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"medians_us": med, "raw_us": res}, f, indent=1)


if __name__ == "__main__":
    main()
