"""What the audit log's indexes and generated columns cost each event (issue 18 item 3).

Raw APSW, no heliosdb capture: realistic event rows (about 300 bytes: 4 users in runs,
80% INSERT, 10% UPDATE, 10% DELETE over 4 targets, JSON metadata, 32-byte hashes) are
inserted into the log's own schema with ``executemany`` in transactions of 1,000 rows
(WAL, synchronous=NORMAL, in /dev/shm when it exists): ``--pre`` rows first, then ``--n``
timed ones. Prints the process time per row of each layout (median of ``--reps`` runs,
each in a fresh file) and its difference from the bare table.

    .venv/bin/python bench/audit_index_cost.py                  # every layout
    .venv/bin/python bench/audit_index_cost.py current covering  # some

On a shared machine process time is noisy: for instructions, run one layout at two sizes
under ``valgrind --tool=callgrind`` (``--only LAYOUT --pre 10000 --n 4000`` and
``--n 12000``) and divide the difference of the totals by the 8,000 rows; subtract the
bare table's figure (docs/AUDIT_FORMAT.md, "Indexes", has the figures measured so).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import apsw  # noqa: E402

from heliosdb.audit import store  # noqa: E402
from heliosdb.audit.events import COLUMNS  # noqa: E402

T = store.DEFAULT_TABLE
Q = store.quoted(T)


def _table_sql(timestamp: str | None) -> str:
    """The log's CREATE TABLE with ``timestamp`` given (None: no generated column)."""
    sql = store._schema_sql(T)[0]
    if timestamp is None:
        return sql.replace(store._GENERATED_SQL, "").replace(
            "checksum      BLOB NOT NULL,", "checksum      BLOB NOT NULL")
    return sql.replace(store.GENERATED_COLUMNS["timestamp"], timestamp)


#: layout name -> (timestamp expression or None, index SQL)
_NEW_TS = store.GENERATED_COLUMNS["timestamp"]
_NOT_IN = "operation NOT IN (" + ", ".join(f"'{o}'" for o in store.BULK_OPERATIONS) + ")"
LAYOUTS = {
    "bare": (None, []),
    "generated-strftime": (store.STRFTIME_TIMESTAMP, []),
    "generated": (_NEW_TS, []),
    "legacy": (store.STRFTIME_TIMESTAMP, store.legacy_index_sql(T)),
    "covering3": (store.STRFTIME_TIMESTAMP, store.covering3_index_sql(T)),
    "narrow-3": (_NEW_TS, [f'CREATE INDEX "{T}_u" ON {Q}("user", id)',
                           f'CREATE INDEX "{T}_o" ON {Q}(operation, id)',
                           f'CREATE INDEX "{T}_t" ON {Q}(target, id)']),
    "user+target": (_NEW_TS, store.index_sql(T)[:2]),
    "current-not-in": (_NEW_TS, store.index_sql(T)[:2] + [
        store.index_sql(T)[2].replace(store.RARE_OPERATION_TERM, _NOT_IN)]),
    "current": (_NEW_TS, store.index_sql(T)),
}


def event_rows(n: int, seed: int = 3) -> list[tuple]:
    rnd = random.Random(seed)
    pool = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz ,.0123456789") for _ in range(4000))
    ops = ("INSERT",) * 8 + ("UPDATE", "DELETE")
    users = ("alice", "bob", "carol", "dave")
    ts = 1_760_000_000_000_000
    out = []
    for i in range(1, n + 1):
        ts += rnd.randrange(1, 80)
        op, k, o = ops[i % 10], i % 4, rnd.randrange(3000)
        q = (f"INSERT INTO t{k}(id, a, b) VALUES (?, ?, ?)" if op == "INSERT"
             else f"{op} t{k} " + pool[o:o + 60])
        md = ('{"application_name":"app","client_ip":"10.0.0.7","database_name":"x.db",'
              '"execution_time_ms":0.%03d}' % (i % 1000))
        out.append((i, ts, f"s{i // 5000}", users[(i // 997) % 4], op, f"t{k}", q, 1, 1,
                    None, md, None, None, None, rnd.randbytes(32), rnd.randbytes(32)))
    return out


def run(layout: str, pre: int, n: int, batch: int = 1000) -> float:
    """Process seconds per timed row."""
    timestamp, indexes = LAYOUTS[layout]
    d = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        db = apsw.Connection(os.path.join(tmp, "cost.db"))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_table_sql(timestamp))
        for sql in indexes:
            db.execute(sql)
        ins = (f"INSERT INTO {Q} ({', '.join(chr(34) + c + chr(34) for c in COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(COLUMNS))})")
        data = event_rows(pre + n)

        def write(rows: list[tuple]) -> None:
            for s in range(0, len(rows), batch):
                db.execute("BEGIN")
                db.executemany(ins, rows[s:s + batch])
                db.execute("COMMIT")

        write(data[:pre])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        t0 = time.process_time()
        write(data[pre:])
        dt = time.process_time() - t0
        db.close()
    return dt / n


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layouts", nargs="*", help="of: " + ", ".join(LAYOUTS))
    ap.add_argument("--pre", type=int, default=100_000, help="rows before the timed ones")
    ap.add_argument("--n", type=int, default=100_000, help="timed rows")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", help="run this layout once, print nothing (for callgrind)")
    a = ap.parse_args(argv)
    if a.only:
        run(a.only, a.pre, a.n)
        return
    base = None
    for name in a.layouts or list(LAYOUTS):
        r = sorted(run(name, a.pre, a.n) * 1e6 for _ in range(a.reps))
        med = r[len(r) // 2]
        if name == "bare":
            base = med
        extra = f"  (+{med - base:.2f} over bare)" if base is not None and name != "bare" else ""
        print(f"{name:20s} {med:6.2f} us/row  min {r[0]:.2f}{extra}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
