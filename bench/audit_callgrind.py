"""Instruction counts per audited statement, measured with ``valgrind --tool=callgrind``.

    .venv/bin/python bench/audit_callgrind.py [--n 1000] [--engines a,b] [--workloads a,b]
    make bench-audit

Timed ratios (bench/audit_hotpath.py, bench/run.py) move with whatever else the shared
machine runs; instruction counts do not. For each engine and workload a small driver runs
under callgrind twice, with N and with 2N statements, and the figure is the difference of
the two totals divided by N: start-up (interpreter, imports, open, schema, pre-fill) is the
same in both runs and cancels out. Workloads (every one over table ``t(id, name, val)``):

  single      single-row INSERT, committed every 1,000 statements
  many        executemany of 1,000 rows per call, one commit per call (figure per row)
  update      UPDATE ... WHERE id = ? on a pre-filled table, committed every 1,000
  autocommit  single-row INSERT, each its own transaction

Engines: ``apsw`` (plain APSW), ``apsw-trigger`` (APSW with hand-written AFTER
INSERT/UPDATE/DELETE triggers writing an audit table, what users write themselves; from
bench/audit_hotpath.py), ``heliosdb`` (not audited), ``heliosdb-audit`` (``config=
"default"``) and ``heliosdb-enc-audit`` (the same, encrypted with a raw key). The journal
is WAL with synchronous=NORMAL everywhere. Prints a markdown table and writes it to
bench/results/audit_callgrind.md, followed by a second table splitting the audited
engine's figure for ``single`` and ``update`` into its parts (SQLite running the
statement, SQLite storing the event row, SHA-256, the C writer, the Merkle fold, and the
rest: Python and glue), from callgrind's inclusive costs by caller
(``callgrind_annotate --tree=caller``), with the same (2N - N) / N difference.

Under valgrind, OpenSSL cannot use the CPU's SHA extensions (valgrind does not emulate
them), so SHA-256 runs its portable code: the two hashes an event needs (chain link and
Merkle leaf) count about 20,000 instructions here, several times what they cost natively
(``openssl speed -evp sha256 -bytes 256`` on this machine: 0.28 us per hash with them,
0.76 us without).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audit_hotpath import _executemany_committed, _open, _schema  # noqa: E402  (same engines, schema, transactions)
import callgrind as _callgrind  # noqa: E402

ENGINES = ("apsw", "apsw-trigger", "heliosdb", "heliosdb-audit", "heliosdb-enc-audit")
WORKLOADS = ("single", "many", "update", "autocommit")
BATCH = 1000
RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      "audit_callgrind.md")
_INS = "INSERT INTO t(name, val) VALUES (?, ?)"
_UPD = "UPDATE t SET val = val + 1 WHERE id = ?"


def drive(engine: str, workload: str, n: int, prefill: int) -> None:
    """Run ``n`` statements of ``workload`` on a fresh database (the measured process).

    ``prefill`` rows are inserted first whatever ``n`` is, so that the two runs compared
    differ only in the statements counted.
    """
    d = tempfile.mkdtemp(prefix="audit_callgrind_")
    try:
        conn = _open(engine, os.path.join(d, "db.sqlite"))
        _schema(engine, conn)
        apsw_like = engine.startswith("apsw")
        if workload == "update":
            _executemany_committed(conn, apsw_like, _INS,
                                   [(f"name{i}", i) for i in range(prefill)])
        if workload == "autocommit" and not apsw_like:
            conn.isolation_level = None  # DB-API autocommit: each statement commits
        ex = conn.cursor().execute
        if workload in ("single", "update"):
            sql = _INS if workload == "single" else _UPD
            for b in range(0, n, BATCH):
                if apsw_like:
                    ex("BEGIN")
                for i in range(b, min(b + BATCH, n)):
                    ex(sql, (f"name{i}", i) if workload == "single" else (i + 1,))
                if apsw_like:
                    ex("COMMIT")
                else:
                    conn.commit()
        elif workload == "many":
            for b in range(0, n, BATCH):
                _executemany_committed(conn, apsw_like, _INS,
                                       [(f"name{i}", i) for i in range(b, min(b + BATCH, n))])
        elif workload == "autocommit":
            for i in range(n):
                ex(_INS, (f"name{i}", i))
        else:
            raise SystemExit(f"unknown workload {workload!r}: one of {', '.join(WORKLOADS)}")
        conn.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def instructions(engine: str, workload: str, n: int, prefill: int) -> int:
    """Total instructions (callgrind ``Ir``) of one driver process running ``n`` statements."""
    return _callgrind.instructions(__file__, engine, workload, n, prefill)


def per_statement(engine: str, workload: str, n: int) -> float:
    """Instructions per statement (per row for ``many``): (Ir(2n) - Ir(n)) / n."""
    return measure(engine, workload, n)[0]


#: Where an audited statement's instructions go: (label, how its figure is derived from
#: the call edges of :func:`callgrind.profile`). Each part is an inclusive cost, so a
#: part excludes what an earlier one counted; the last is what remains.
_SHA = ("SHA256_Init", "SHA256_Update", "SHA256_Final")
PARTS = (
    ("SQLite running the statement itself and its COMMIT (sqlite3_step called by APSW)",
     lambda e: e.get(("sqlite3_step", "APSWCursor_step"), 0)),
    ("SQLite storing the event row: log table, 3 indexes, 2 generated columns "
     "(sqlite3_step called by the C writer)",
     lambda e: e.get(("sqlite3_step", "heliosdb_log_append"), 0)),
    ("SHA-256: chain link and Merkle leaf per event, Merkle nodes (OpenSSL's portable "
     "code: valgrind hides the CPU's SHA instructions)",
     lambda e: sum(e.get((f, c), 0) for f in _SHA
                   for c in ("heliosdb_log_append", "merkle_fold"))),
    ("the C writer's own work: encoding the event, binding, preparing the INSERT",
     lambda e: e.get(("heliosdb_log_append", ""), 0)
     - e.get(("sqlite3_step", "heliosdb_log_append"), 0)
     - sum(e.get((f, "heliosdb_log_append"), 0) for f in _SHA)),
    ("the Merkle frontier fold, without its hashes",
     lambda e: e.get(("heliosdb_merkle_fold", ""), 0)
     - sum(e.get((f, "merkle_fold"), 0) for f in _SHA)),
)
REST = ("everything else: Python (DB-API cursor, audit capture, the flush's per-event "
        "work), APSW's glue, memory management")
#: The engines and workloads whose instructions are split into :data:`PARTS`: those where
#: each event is stored by the C writer at commit. (``many`` records one event per call
#: of 1,000 rows; an ``autocommit`` statement's single event takes the executemany path,
#: whose INSERT APSW steps: the parts above would misname it.)
SPLIT_ENGINES = ("heliosdb-audit",)
SPLIT_WORKLOADS = ("single", "update")


def measure(engine: str, workload: str, n: int) -> "tuple[float, Optional[list[float]]]":
    """(instructions per statement, and for :data:`SPLIT_ENGINES` on
    :data:`SPLIT_WORKLOADS` the share of each of :data:`PARTS` and then the rest, per
    statement; else None)."""
    prefill = 2 * n
    args = (__file__, engine, workload)
    if engine not in SPLIT_ENGINES or workload not in SPLIT_WORKLOADS:
        return (_callgrind.instructions(*args, 2 * n, prefill)
                - _callgrind.instructions(*args, n, prefill)) / n, None
    total2, e2 = _callgrind.profile(*args, 2 * n, prefill)
    total1, e1 = _callgrind.profile(*args, n, prefill)
    total = (total2 - total1) / n
    parts = [(fn(e2) - fn(e1)) / n for _, fn in PARTS]
    return total, parts + [total - sum(parts)]


def split_table(splits: dict, n: int) -> str:
    """The :data:`PARTS` of each split engine and workload as a markdown table."""
    cols = [(e, w) for (e, w) in splits]
    lines = [f"Where the instructions of an audited statement go (callgrind inclusive costs "
             f"by caller, (2N - N) / N, N = {n:,})", "",
             "| part | " + " | ".join(f"{e} {w}" for e, w in cols) + " |",
             "|---|" + "---|" * len(cols)]
    labels = [label for label, _ in PARTS] + [REST]
    for i, label in enumerate(labels):
        lines.append(f"| {label} | " + " | ".join(
            f"{splits[c][i]:,.0f} ({splits[c][i] / sum(splits[c]):.0%})" for c in cols) + " |")
    lines.append("| total | " + " | ".join(f"{sum(splits[c]):,.0f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def table(results: dict, engines: list, workloads: list, n: int) -> str:
    """The results as a markdown table, with ratios of the audited engine to the others."""
    head = ["workload"] + engines
    if "heliosdb-audit" in engines:
        head += [f"audit / {b}" for b in ("apsw", "apsw-trigger", "heliosdb") if b in engines]
    enc = "heliosdb-enc-audit" in engines and "heliosdb-audit" in engines
    if enc:
        head.append("enc+audit / audit")
    lines = [f"Instructions per statement (callgrind Ir, (Ir(2N) - Ir(N)) / N, N = {n:,}; "
             "`many`: per row)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in workloads:
        r = results[w]
        cells = [w] + [f"{r[e]:,.0f}" for e in engines]
        if "heliosdb-audit" in engines:
            cells += [f"{r['heliosdb-audit'] / r[b]:.2f}x" for b in
                      ("apsw", "apsw-trigger", "heliosdb") if b in engines]
        if enc:
            cells.append(f"{r['heliosdb-enc-audit'] / r['heliosdb-audit']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure every engine on every workload and print / write the table."""
    ap = _callgrind.arguments(__doc__, ENGINES, WORKLOADS, RESULT)
    a = ap.parse_args()
    if a.drive:
        drive(a.drive[0], a.drive[1], int(a.drive[2]), int(a.drive[3]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    engines, workloads = a.engines.split(","), a.workloads.split(",")
    results: dict = {}
    splits: dict = {}
    for w in workloads:
        for e in engines:
            results.setdefault(w, {})[e], parts = measure(e, w, a.n)
            if parts is not None:
                splits[(e, w)] = parts
            print(f"{w:10} {e:15} {results[w][e]:12,.0f} Ir per statement", flush=True)
    text = table(results, engines, workloads, a.n)
    if splits:
        text += "\n" + split_table(splits, a.n)
    print()
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
