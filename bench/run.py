#!/usr/bin/env python3
"""HeliosDB and its peers side by side, in one run, reported as ratios (issue 6).

    .venv/bin/python bench/run.py              # full sizes (make bench)
    .venv/bin/python bench/run.py --quick      # small sizes, under 2 minutes (make bench-quick)
    .venv/bin/python bench/run.py --engines apsw,sqlcipher --workloads W1,W3s
    .venv/bin/python bench/run.py --scale 0.5 --size W6=300000   # reduced sizes, noted in the report

Each engine x workload x run is a fresh process (bench/worker.py) in the engine's own
interpreter: the project venv for sqlite3, apsw, heliosdb and the trigger baseline; its
own venv under bench/.venvs/ for SQLCipher and SQLite3MultipleCiphers, installed here on
first use. Engines run in a different order in each run. Each engine is probed first;
one that is missing or lacks a feature is reported as unavailable with the reason.

Output: a Markdown report printed and written to bench/RESULTS.md, the raw data to
bench/results/latest.json. A --quick run writes bench/results/quick/RESULTS.md and
bench/results/quick/latest.json instead, so that it never replaces a full report;
``--out DIR`` writes DIR/RESULTS.md and DIR/results/latest.json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402
import report  # noqa: E402

WORKER = os.path.join(HERE, "worker.py")

ENGINES = [
    "sqlite3", "apsw", "heliosdb", "heliosdb-enc", "heliosdb-audit", "heliosdb-enc-audit",
    "sqlcipher", "sqlite3mc", "sqlite3mc-aegis", "apsw-trigger",
]

WORKLOADS = ["W1", "W2", "W3", "W3s", "W3c", "W4", "W5", "W5m", "W5u", "W6", "W7", "W7p", "W8", "W9"]

FULL = {"W1": 200_000, "W2": 2_000, "W3": [200_000, 100_000], "W4": [200_000, 5],
        "W5": 100_000, "W5u": [10_000, 100_000], "W6": 1_000_000, "W7": [200, 5],
        "W8": 20, "W9": 100}
QUICK = {"W1": 20_000, "W2": 200, "W3": [20_000, 5_000], "W4": [20_000, 3],
         "W5": 5_000, "W5u": [1_000, 5_000], "W6": 20_000, "W7": [20, 1],
         "W8": 5, "W9": 4}
# workloads added for the DESIGN.md targets (cached reads, executemany, updates): a full
# run has them; --quick leaves them out to stay well under 2 minutes
QUICK_SKIPS = ["W3c", "W5m", "W5u"]
# which entries --scale multiplies (row and event counts, MB); repetitions are kept
SCALED = {"W1": [0], "W2": [0], "W3": [0, 1], "W4": [0], "W5": [0], "W5u": [0, 1],
          "W6": [0], "W9": [0]}

ENC_ENGINES = {"heliosdb-enc", "heliosdb-enc-audit", "sqlcipher", "sqlite3mc",
               "sqlite3mc-aegis"}
AUDIT_LOG_ENGINES = {"apsw", "heliosdb-audit", "heliosdb-enc-audit", "apsw-trigger"}


def static_na(engine, workload):
    """n/a reasons known without starting a process (the worker checks them too)."""
    base = workload.split(".")[0]
    if base in ("W6", "W8"):
        if engine == "apsw-trigger":
            return ("triggers write no hash chain and no actor; the plain APSW row is "
                    "the hand-made baseline")
        if engine not in AUDIT_LOG_ENGINES:
            return "no audit log"
    if base == "W7p" and engine not in ENC_ENGINES and engine != "apsw":
        return "no passphrase"
    if "." in workload and engine != "heliosdb-enc":
        return "heliosdb KDF profile"
    if base == "W9" and engine not in ENC_ENGINES and engine != "apsw":
        return "not encrypted"
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    ap.add_argument("--runs", type=int, default=3, help="runs per engine x workload (>= 3 "
                    "for a report; fewer only for debugging)")
    ap.add_argument("--engines", help="comma-separated subset of: " + ", ".join(ENGINES))
    ap.add_argument("--workloads", help="comma-separated subset of: " + ", ".join(WORKLOADS))
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply row/event counts and MB (noted in the report)")
    ap.add_argument("--size", action="append", default=[], metavar="W=N[,M]",
                    help="override one size, e.g. W6=300000 or W3=200000,50000")
    ap.add_argument("--no-install", action="store_true",
                    help="do not create the peers' venvs (missing peers are unavailable)")
    ap.add_argument("--out", help="write RESULTS.md and latest.json here instead of bench/")
    ap.add_argument("--timeout", type=float, help="seconds per process (default 900, quick 120)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the databases made")
    return ap.parse_args(argv)


def resolve_sizes(a):
    sizes = json.loads(json.dumps(QUICK if a.quick else FULL))
    notes = []
    if a.scale != 1.0:
        for k, idxs in SCALED.items():
            v = sizes[k]
            if isinstance(v, list):
                for i in idxs:
                    v[i] = max(1, int(v[i] * a.scale))
            else:
                sizes[k] = max(1, int(v * a.scale))
        notes.append(f"sizes scaled by {a.scale} (--scale)")
    for item in a.size:
        k, _, v = item.partition("=")
        vals = [int(float(x)) for x in v.split(",")]
        sizes[k] = vals if isinstance(sizes.get(k), list) else vals[0]
        if isinstance(sizes[k], list) and len(vals) < len(QUICK[k]):
            sizes[k] = vals + (QUICK if a.quick else FULL)[k][len(vals):]
        notes.append(f"{k} set to {sizes[k]} (--size)")
    sizes["W5"] = max(1000, sizes["W5"] // 1000 * 1000)
    return sizes, notes


def run_worker(py, args, timeout):
    t0 = time.perf_counter()
    try:
        r = subprocess.run([py, WORKER] + args, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            res = json.loads(line[len("@@RESULT "):])
            res["wall_s"] = time.perf_counter() - t0
            if res.get("status") == "error" and r.stderr.strip():
                res["stderr_tail"] = r.stderr.strip()[-1500:]
            return res
    err = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "reason": f"worker exited {r.returncode}: {err[:300]}"}


def aggregate(cells):
    """Median, spread and extras of a deep copy of the cells (the runs go on in place)."""
    cells = json.loads(json.dumps(cells))
    for row in cells.values():
        for c in row.values():
            if c.get("status") in ("unavailable", "na", "error") or not c.get("times"):
                c.pop("extras", None)
                if not c.get("status"):
                    c.update(status="error", reason="no run completed")
                continue
            ts = c["times"]
            c["status"] = "ok"
            c["median"] = statistics.median(ts)
            c["min"], c["max"] = min(ts), max(ts)
            extra = {}
            for k in {k for x in c["extras"] for k in x}:
                vals = [x[k] for x in c["extras"] if k in x]
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                    extra[k] = statistics.median(vals)
                else:
                    extra[k] = vals[-1]
            c["extra"] = extra
            del c["extras"]
    return cells


def write_outputs(a, cells, engines, workloads, info, sizes, notes, argv, started,
                  load_start, out_dir, results_dir, runs_done, final):
    cells = aggregate(cells)
    report.add_ratios(cells, engines)
    notes = list(notes)
    if not final:
        notes.append(f"PARTIAL REPORT: {runs_done} of {a.runs} runs done so far (the "
                     f"harness rewrites this file after each run)")
    data = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if a.quick else "full",
            "runs": runs_done,
            "runs_planned": a.runs,
            "complete": final,
            "sizes": sizes,
            "notes": notes,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "duration_s": round(time.time() - started, 1),
            "json": os.path.relpath(os.path.join(results_dir, "latest.json"),
                                    os.path.dirname(HERE)),
            "machine": {**report.machine(), "loadavg_at_start": load_start},
        },
        "engines": info,
        "workloads": {w: report.workload_title(w, sizes) for w in workloads},
        "results": cells,
    }
    md = report.markdown(data, engines, workloads)
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(results_dir, "latest.json"), "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=False)
        fh.write("\n")
    if not final:
        print(f"(partial report after run {runs_done} written)", flush=True)
        return
    print(md)
    chart = report.chart(data, engines, workloads, os.path.join(results_dir, "ratios.png"))
    print(f"wrote {os.path.join(out_dir, 'RESULTS.md')} and "
          f"{os.path.join(results_dir, 'latest.json')}" + (f" and {chart}" if chart else ""),
          flush=True)


_TMP = []  # temporary folders to remove if the run is stopped


def _stop(signum, frame):
    raise KeyboardInterrupt  # subprocess.run then kills the running worker


def main(argv=None):
    a = parse_args(argv)
    if argv is None:
        signal.signal(signal.SIGTERM, _stop)
    started = time.time()
    load_start = [round(x, 2) for x in os.getloadavg()]
    sizes, notes = resolve_sizes(a)
    notes += a.note
    engines = a.engines.split(",") if a.engines else list(ENGINES)
    if a.workloads:
        workloads = a.workloads.split(",")
    elif a.quick:  # the workloads; the additions for DESIGN.md targets run in full
        workloads = [w for w in WORKLOADS if w not in QUICK_SKIPS]
        notes.append("--quick skips " + ", ".join(QUICK_SKIPS) + " (run them with "
                     "--workloads, or in a full run)")
    else:
        workloads = list(WORKLOADS)
    for e in engines:
        if e not in ENGINES:
            sys.exit(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    for w in workloads:
        if w.split(".")[0] not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    if a.runs < 3:
        notes.append(f"only {a.runs} run(s) per cell (--runs): not a report to quote")
    timeout = a.timeout or (120 if a.quick else 900)
    if a.out:
        out_dir, results_dir = a.out, os.path.join(a.out, "results")
    elif a.quick:  # never overwrite the report of a full run with a quick one
        out_dir = results_dir = os.path.join(HERE, "results", "quick")
    else:
        out_dir, results_dir = HERE, os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(results_dir, exist_ok=True)
    tmp_root = os.path.join(HERE, "results", "tmp")
    os.makedirs(tmp_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="run-", dir=tmp_root)
    if not a.keep_tmp:
        _TMP.append(tmp)
    fixtures = os.path.join(tmp, "fixtures")
    os.makedirs(fixtures)
    log = lambda *x: print(*x, flush=True)  # noqa: E731
    log(f"heliosdb bench: {'quick' if a.quick else 'full'} sizes {json.dumps(sizes)}")

    # -- interpreters and probes
    info = {}
    for e in engines:
        venv = peers.ENGINE_VENV.get(e)
        if venv:
            py, why, pkg = peers.ensure(venv, install=not a.no_install, log=log)
        else:
            py, why, pkg = sys.executable, None, None
        if py is None:
            info[e] = {"available": False, "reason": why}
            continue
        res = run_worker(py, [e, "--probe", "--workdir", os.path.join(tmp, "probe")], 120)
        if "status" in res:  # the probe itself crashed
            res = {"available": False, "reason": res.get("reason")}
        res["python"] = os.path.relpath(py, os.path.dirname(HERE)) if py.startswith(
            os.path.dirname(HERE)) else py
        if pkg:
            res["package"] = pkg
        info[e] = res
    for e in engines:
        i = info[e]
        log(f"  {e:20s} " + (f"{i.get('module', '')} | SQLite {i.get('sqlite_version', '?')}"
                              if i.get("available") else f"unavailable: {i.get('reason')}"))

    # heliosdb's KDF profiles become workloads of their own
    if "W7p" in workloads:
        profs = []
        for e in ("heliosdb-enc",):
            if info.get(e, {}).get("available"):
                profs = [p for p in info[e].get("kdf_profiles") or [] if p != "default"]
        pos = workloads.index("W7p") + 1
        workloads[pos:pos] = [f"W7p.{p}" for p in profs]

    # -- the runs
    cells = {w: {e: {"times": [], "extras": [], "wall_s": 0.0} for e in engines}
             for w in workloads}
    for w in workloads:
        for e in engines:
            c = cells[w][e]
            if not info[e].get("available"):
                c.update(status="unavailable", reason=info[e].get("reason"))
            elif static_na(e, w):
                c.update(status="na", reason=static_na(e, w))
    for r in range(a.runs):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        if r % 2:
            order.reverse()
        log(f"run {r + 1}/{a.runs}: order {', '.join(order)}")
        for w in workloads:
            line = []
            for e in order:
                c = cells[w][e]
                if c.get("status") in ("unavailable", "na", "error"):
                    continue
                py = sys.executable if e not in peers.ENGINE_VENV else peers._python(
                    peers.ENGINE_VENV[e])
                wd = os.path.join(tmp, f"{e}-{w}-{r}")
                res = run_worker(py, [e, w, "--sizes", json.dumps(sizes), "--workdir", wd,
                                      "--fixtures", fixtures], timeout)
                shutil.rmtree(wd, ignore_errors=True)
                c["wall_s"] = round(c["wall_s"] + res.get("wall_s", 0.0), 3)
                if res["status"] == "ok":
                    c["times"].append(res["seconds"])
                    c["extras"].append(res.get("extra") or {})
                    line.append(f"{e}={report._fmt_s(res['seconds'])}")
                else:
                    c.update(status=res["status"], reason=res.get("reason"))
                    if res.get("stderr_tail"):
                        c["stderr_tail"] = res["stderr_tail"]
                    line.append(f"{e}: {res['status']}")
            if line:
                log(f"  {w:10s} " + "  ".join(line))
        if r + 1 < a.runs:  # a partial report, in case the run is stopped before the end
            write_outputs(a, cells, engines, workloads, info, sizes, notes, argv, started,
                          load_start, out_dir, results_dir, runs_done=r + 1, final=False)

    write_outputs(a, cells, engines, workloads, info, sizes, notes, argv, started,
                  load_start, out_dir, results_dir, runs_done=a.runs, final=True)
    if not a.keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        for t in _TMP:
            shutil.rmtree(t, ignore_errors=True)
        sys.exit("stopped: the last partial report (if any) is in place")
