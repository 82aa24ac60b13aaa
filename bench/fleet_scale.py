"""A fleet at scale (issue 21, item 5): N databases of M audit events each, exported to one
Parquet dataset, shipped incrementally, and verified on arrival.

Builds N audited databases (default 100) of M events (default 100,000: 10M in all; rows
the shape of W6, ~200 bytes, written by ``heliosdb.audit.store.append`` so that building is
not what is measured), then times, one database after another in this process:

* ``export``: ``conn.audit.export(DIR, format="parquet")`` of each whole log into one
  dataset (and, for the size comparison, ``export(F.jsonl.gz)``, timed too);
* ``ship parquet``: ``conn.audit.ship("parquet:DIR2", state=...)`` in batches of
  ``--batch`` (chain recomputed, each part fsynced, the state written after each);
* ``ship syslog``: ``conn.audit.ship("syslog+tcp://127.0.0.1:PORT")`` to a collector
  process on loopback that reads and discards (RFC 6587 frames, one connection per batch);
* ``fleet-verify``: ``verify_fleet(DIR2, jobs=J)`` over the shipped dataset;

and reports events/s for each and the disk bytes per event of the Parquet dataset against
the JSONL.gz exports. Writes ``bench/results/fleet_scale.md`` (``--out``) and prints JSON.

    .venv/bin/python bench/fleet_scale.py [--databases N] [--events M] [--quick]
                                          [--batch B] [--jobs J] [--out FILE]

``--quick`` is 10 x 10,000. Timings are never asserted by tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import heliosdb  # noqa: E402
from heliosdb.audit import chain, store  # noqa: E402
from heliosdb.audit.fleet import verify_fleet  # noqa: E402
from verify_incremental import events as synthetic_events  # noqa: E402  (the same rows)

HERE = os.path.dirname(os.path.abspath(__file__))
# A collector that reads and discards, closing when the sender closes (as rsyslog does).
_SINK = """
import socket, sys, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
print(srv.getsockname()[1], flush=True)
def serve(c):
    while c.recv(1 << 20):
        pass
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def build(path: str, m: int) -> None:
    """An audited database whose log holds ``m`` events (LOGIN and the rest appended)."""
    import apsw

    conn = heliosdb.connect(path, config="default", isolation_level=None)
    conn.close()
    raw = apsw.Connection(path)
    raw.execute("PRAGMA synchronous=OFF")
    have = raw.execute(f"SELECT count(*) FROM {store.DEFAULT_TABLE}").fetchone()[0]
    for lo in range(have, m, 10_000):
        raw.execute("BEGIN IMMEDIATE")
        store.append(raw, store.DEFAULT_TABLE, synthetic_events(min(10_000, m - lo), lo))
        raw.execute("COMMIT")
    raw.close()


def hash_bytes(root: str) -> int:
    """Compressed bytes of the ``checksum`` and ``prev_hash`` columns of every part."""
    import pyarrow.parquet as pq

    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            md = pq.ParquetFile(os.path.join(d, f)).metadata
            for rg in range(md.num_row_groups):
                for i in range(md.num_columns):
                    col = md.row_group(rg).column(i)
                    if col.path_in_schema in ("checksum", "prev_hash"):
                        total += col.total_compressed_size
    return total


def du(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def per_db(paths: list, fn) -> tuple[float, int]:
    """Run ``fn(conn)`` on each database (opened outside the timing); return (seconds,
    events it reports)."""
    total_s, events = 0.0, 0
    for p in paths:
        conn = heliosdb.connect(p, config="default", isolation_level=None)
        try:
            t0 = time.perf_counter()
            events += fn(conn)
            total_s += time.perf_counter() - t0
        finally:
            conn.close()
    return total_s, events


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--databases", type=int, default=100)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="10 databases x 10,000 events")
    ap.add_argument("--batch", type=int, default=10_000, help="ship batch (events)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="fleet-verify processes")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fleet_scale.md"))
    a = ap.parse_args(argv)
    if a.quick:
        a.databases, a.events = 10, 10_000
    from heliosdb.audit.parquet import require_pyarrow
    require_pyarrow()  # imported before any timing
    with tempfile.TemporaryDirectory(dir=a.dir) as work:
        t0 = time.perf_counter()
        paths = [os.path.join(work, f"device{i:03d}.db") for i in range(a.databases)]
        for p in paths:
            build(p, a.events)
        build_s = time.perf_counter() - t0
        lake, shipped = os.path.join(work, "lake"), os.path.join(work, "shipped")
        gz = os.path.join(work, "jsonl")
        os.mkdir(gz)
        exp_s, exp_n = per_db(paths, lambda c: c.audit.export(lake, format="parquet",
                                                             record=False).count)
        jsonl_s, jsonl_n = per_db(paths, lambda c: c.audit.export(
            os.path.join(gz, os.path.basename(c.audit._db.db_filename("main")) + ".jsonl.gz"),
            record=False).count)
        ship_s, ship_n = per_db(paths, lambda c: c.audit.ship(
            f"parquet:{shipped}", state=c.audit._db.db_filename("main") + ".pq.state",
            batch_size=a.batch).count)
        sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE,
                                text=True)
        try:
            port = int(sink.stdout.readline())
            sys_s, sys_n = per_db(paths, lambda c: c.audit.ship(
                f"syslog+tcp://127.0.0.1:{port}",
                state=c.audit._db.db_filename("main") + ".sys.state",
                batch_size=a.batch, hostname="bench").count)
        finally:
            sink.kill()
            sink.wait()
        t0 = time.perf_counter()
        rep = verify_fleet(shipped, jobs=a.jobs)
        fv_s = time.perf_counter() - t0
        fv_n = sum(d.events for d in rep.databases)
        if not rep.ok:
            raise SystemExit(f"fleet-verify found faults: {rep.databases}")
        # DuckDB reads the shipped dataset as it is (Hive partitions): its count per
        # database must be what each database's own log says.
        dq_s, dq_ok = duckdb_counts(shipped, paths)
        pq_bytes, gz_bytes, shipped_bytes = du(lake), du(gz), du(shipped)
        pq_hashes = hash_bytes(lake)
    res = {
        "databases": a.databases, "events_per_database": a.events,
        "events": exp_n, "chain_impl": chain.__impl__, "ship_batch": a.batch,
        "verify_jobs": a.jobs, "cpus": os.cpu_count(), "python": platform.python_version(),
        "build_s": round(build_s, 1),
        "export_parquet": {"s": round(exp_s, 2), "events_per_s": round(exp_n / exp_s)},
        "export_jsonl_gz": {"s": round(jsonl_s, 2), "events_per_s": round(jsonl_n / jsonl_s)},
        "ship_parquet": {"s": round(ship_s, 2), "events_per_s": round(ship_n / ship_s)},
        "ship_syslog_tcp": {"s": round(sys_s, 2), "events_per_s": round(sys_n / sys_s)},
        "fleet_verify": {"s": round(fv_s, 2), "events_per_s": round(fv_n / fv_s)},
        "duckdb_query": {"s": round(dq_s, 2), "events_per_s": round(fv_n / dq_s),
                         "databases_matching": dq_ok},
        "bytes_per_event": {"parquet": round(pq_bytes / exp_n, 1),
                            "parquet_hashes": round(pq_hashes / exp_n, 1),
                            "parquet_shipped": round(shipped_bytes / ship_n, 1),
                            "jsonl_gz": round(gz_bytes / jsonl_n, 1)},
    }
    write_markdown(res, a.out, argv if argv is not None else sys.argv[1:])
    print(json.dumps(res, indent=2))
    return res


def duckdb_counts(dataset: str, paths: list) -> tuple[float, int]:
    """Count events per database in the dataset with DuckDB and compare each with the
    database's own log; returns (seconds of the DuckDB query, databases that match).
    Raises SystemExit on a mismatch (the bench must not report a wrong dataset)."""
    import duckdb

    import heliosdb

    t0 = time.perf_counter()
    got = dict(((db, (n, top)) for db, n, top in duckdb.sql(
        "SELECT database_id, count(*), max(id) FROM read_parquet(?, hive_partitioning=true) "
        "GROUP BY database_id", params=[os.path.join(dataset, "**", "*.parquet")]).fetchall()))
    seconds = time.perf_counter() - t0
    ok = 0
    for p in paths:
        c = heliosdb.connect(p)
        try:
            db_id = c.execute("SELECT value FROM __audit_meta WHERE tbl = '__audit_log' "
                              "AND key = 'database_id'").fetchone()[0]
            own = c.audit.query().count()
        finally:
            c.close()
        n, top = got.get(db_id, (0, 0))
        # (what was shipped is the log up to the head it found; later LOGIN/LOGOUT events
        # of the bench's own connections are not in the dataset yet)
        if n > own or n != top:
            raise SystemExit(f"DuckDB sees {n} events (max id {top}) of database {db_id}, "
                             f"its log has {own}")
        ok += 1
    return seconds, ok


def write_markdown(r: dict, path: str, argv: list) -> None:
    b = r["bytes_per_event"]
    rows = [("export to Parquet (one dataset)", r["export_parquet"]),
            ("export to JSONL.gz (for the size comparison)", r["export_jsonl_gz"]),
            (f"ship to Parquet (batches of {r['ship_batch']:,}, fsync + state per batch)",
             r["ship_parquet"]),
            ("ship to syslog over TCP (loopback collector that discards)",
             r["ship_syslog_tcp"]),
            (f"fleet-verify the shipped dataset ({r['verify_jobs']} processes)",
             r["fleet_verify"]),
            ("DuckDB: count(*) and max(id) per database over the shipped dataset",
             r["duckdb_query"])]
    lines = [
        "# Fleet scale (bench/fleet_scale.py)", "",
        f"`bench/fleet_scale.py {' '.join(argv)}`".replace(" `", "`"), "",
        f"{r['databases']} databases x {r['events_per_database']:,} events = "
        f"{r['events']:,} events; chain {r['chain_impl']}, Python {r['python']}, "
        f"{r['cpus']} CPUs (shared with other work: compare ratios, not absolutes); "
        f"building took {r['build_s']} s.", "",
        "| step | seconds | events/s |", "|---|---:|---:|",
        *[f"| {name} | {v['s']} | {v['events_per_s']:,} |" for name, v in rows], "",
        f"DuckDB's counts matched `conn.audit.query()` on "
        f"{r['duckdb_query']['databases_matching']} of {r['databases']} databases.", "",
        "| disk bytes per event | |", "|---|---:|",
        f"| Parquet dataset, one export per database (zstd) | {b['parquet']} |",
        f"| Parquet dataset, shipped in batches | {b['parquet_shipped']} |",
        f"| JSONL.gz export | {b['jsonl_gz']} |", "",
        f"Of the Parquet export's {b['parquet']} bytes per event, {b['parquet_hashes']} are "
        "the two hash columns (`checksum`, `prev_hash`; the file's own column sizes). "
        "Hashes do not compress, and `prev_hash` repeats the previous row's "
        "`checksum` in another column, where zstd cannot see the repeat; gzip's window "
        "finds it in a JSON line. A lake that trusts its verified arrival could drop "
        "`prev_hash` (it is derivable), but then a part no longer verifies on its own.", "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
