"""Full vs incremental audit verification on a large log (issue 20).

Builds a log of N events (default 1,000,000; ~200-byte rows, the shape of W6), takes a
version 2 checkpoint, appends K more events (default 1,000), then times, each the median
of R runs in this process:

* ``full``: ``verify_connection(conn, checkpoint=cp)``: every event, and the Merkle tree
  recomputed (the C aggregate folds the leaves as it walks); ``full_verify_chain_only``
  is the same walk with the tree left out, i.e. what the tree costs;
* ``since``: ``verify_connection(conn, since=cp)``: the K events after the checkpoint and
  the tree's consistency with the signed frontier;
* ``prove``: one inclusion proof (the prover keeps no interior nodes: it reads the log)
  and checking it (``check_inclusion``: O(log n) hashes).

    .venv/bin/python bench/verify_incremental.py [--events N] [--new K] [--runs R]

Prints one JSON object; bench/RESULTS.md quotes it next to W6. Timings are never asserted
by tests.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from heliosdb.audit import chain, merkle, store  # noqa: E402
from heliosdb.audit.checkpoint import create_checkpoint  # noqa: E402
from heliosdb.audit.events import EventFields  # noqa: E402
from heliosdb.audit.verify import verify_connection  # noqa: E402

KEY = b"bench-hmac-key-0123456789abcdef!"


def events(n: int, start: int) -> list:
    return [EventFields(operation="INSERT", target="main.accounts", user="alice",
                        session_id=f"s-{(start + i) // 1000}",
                        query="INSERT INTO accounts(id, balance, owner) VALUES (?, ?, ?)",
                        affected_rows=1, success=True, error=None,
                        metadata={"application_name": "billing", "client_ip": "10.0.0.7"},
                        old_values=None, new_values={"balance": start + i, "id": start + i},
                        reason=None) for i in range(n)]


def median_time(fn, runs: int) -> float:
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--new", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    import apsw
    with tempfile.TemporaryDirectory() as d:
        conn = apsw.Connection(os.path.join(d, "bench.db"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        store.ensure_schema(conn)
        t0 = time.perf_counter()
        for lo in range(0, a.events, 10_000):
            store.append(conn, store.DEFAULT_TABLE, events(min(10_000, a.events - lo), lo),
                         now_us=1_700_000_000_000_000 + lo)
        build_s = time.perf_counter() - t0
        cp = create_checkpoint(conn, signing_key=KEY)
        store.append(conn, store.DEFAULT_TABLE, events(a.new, a.events))

        def full():
            r = verify_connection(conn, checkpoint=cp, hmac_key=KEY)
            assert r.ok and r.events_checked == a.events + a.new, r.message

        def since():
            r = verify_connection(conn, since=cp, hmac_key=KEY)
            assert r.ok and r.events_checked == a.new, r.message

        proof = {}

        def prove():
            proof["p"] = merkle.prove_inclusion(conn, store.DEFAULT_TABLE, a.events // 3, cp)

        full_s = median_time(full, a.runs)
        # The same walk without the tree (what verify did before it): the tree's cost.
        import importlib
        verify_mod = importlib.import_module("heliosdb.audit.verify")
        saved = verify_mod._anchor_tree
        verify_mod._anchor_tree = lambda *args: None
        try:
            chain_only_s = median_time(full, a.runs)
        finally:
            verify_mod._anchor_tree = saved
        since_s = median_time(since, max(a.runs, 21))
        prove_s = median_time(prove, max(1, a.runs // 2))
        check_s = median_time(lambda: merkle.check_inclusion(proof["p"], hmac_key=KEY), 101)
        print(json.dumps({
            "events": a.events, "new_events": a.new, "chain_impl": chain.__impl__,
            "build_s": round(build_s, 2), "full_verify_s": round(full_s, 4),
            "full_verify_chain_only_s": round(chain_only_s, 4),
            "since_verify_ms": round(since_s * 1000, 2),
            "prove_inclusion_s": round(prove_s, 3),
            "check_inclusion_ms": round(check_s * 1000, 3),
            "audit_path_len": len(proof["p"]["audit_path"]),
            "db_mb": round(os.path.getsize(os.path.join(d, "bench.db")) / 1e6, 1)}))
        conn.close()


if __name__ == "__main__":
    main()
