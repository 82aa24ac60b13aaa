"""The benchmark harness runs and writes well-formed output (bench/, issue 6).

Tiny sizes, two in-venv engines, two workloads, nothing installed (the peers' venvs are
not touched: --no-install). No timing is ever asserted here: numbers on a shared machine
say nothing about correctness.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def _table_rows(md: str):
    """Every Markdown table, as lists of cell lists (header row first)."""
    tables, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    return tables


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--no-install",
           "--engines", "sqlite3,apsw", "--workloads", "W1,W3",
           "--size", "W1=2000", "--size", "W3=2000,500", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r.stdout


def test_json_is_well_formed(bench_run):
    out, _ = bench_run
    data = json.loads((out / "results" / "latest.json").read_text())
    assert set(data) >= {"meta", "engines", "workloads", "results"}
    m = data["meta"]
    assert m["runs"] >= 3 and m["mode"] == "quick"
    for k in ("cpu", "cores", "memory", "python"):
        assert m["machine"][k]
    assert set(data["engines"]) == {"sqlite3", "apsw"}
    for e in ("sqlite3", "apsw"):
        assert data["engines"][e]["available"] is True
        assert data["engines"][e]["sqlite_version"]
    assert set(data["results"]) == {"W1", "W3"}
    for w in ("W1", "W3"):
        for e in ("sqlite3", "apsw"):
            c = data["results"][w][e]
            assert c["status"] == "ok", c
            assert len(c["times"]) == m["runs"]
            assert c["min"] <= c["median"] <= c["max"]
            assert c["ratio_apsw"] > 0 and c["best_peer"] in ("sqlite3", "apsw")
        assert data["results"][w]["apsw"]["ratio_apsw"] == pytest.approx(1.0)


def test_markdown_is_well_formed(bench_run):
    out, stdout = bench_run
    md = (out / "RESULTS.md").read_text()
    assert md.startswith("# HeliosDB benchmark results")
    assert "**Machine:**" in md and "## Summary" in md
    assert "### W1:" in md and "### W3:" in md
    tables = _table_rows(md)
    assert len(tables) >= 4  # engines, summary, one per workload
    for t in tables:
        width = len(t[0])
        assert all(len(row) == width for row in t), t
        assert set("".join(t[1])) <= set("-:")  # the separator row
    assert md.strip() in stdout  # printed as well as written


def test_unavailable_engine_is_reported_with_its_reason():
    sys.path.insert(0, BENCH)
    try:
        import report
    finally:
        sys.path.remove(BENCH)
    cells = {"W1": {"apsw": {"status": "ok", "times": [1.0, 1.2, 1.1], "median": 1.1,
                             "min": 1.0, "max": 1.2, "extra": {}},
                    "sqlcipher": {"status": "unavailable", "reason": "cannot install: x"}}}
    report.add_ratios(cells, ["apsw", "sqlcipher"])
    data = {"meta": {"date": "d", "mode": "quick", "runs": 3, "sizes": {}, "notes": [],
                     "duration_s": 1.0, "machine": report.machine()},
            "engines": {"apsw": {"available": True, "module": "apsw", "sqlite_version": "3"},
                        "sqlcipher": {"available": False, "reason": "cannot install: x"}},
            "workloads": {"W1": "bulk insert"}, "results": cells}
    md = report.markdown(data, ["apsw", "sqlcipher"], ["W1"])
    assert "unavailable: cannot install: x" in md
    for t in _table_rows(md):
        assert all(len(row) == len(t[0]) for row in t)
