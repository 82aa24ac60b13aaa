"""Ratios, the machine's description, and the Markdown report of bench/run.py."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

# "best peer" = the fastest of the engines a user would pick instead, for the same job
ENGINE_CLASS = {
    "sqlite3": "plain", "apsw": "plain", "heliosdb": "plain",
    "heliosdb-enc": "encrypted", "sqlcipher": "encrypted", "sqlite3mc": "encrypted",
    "sqlite3mc-aegis": "encrypted",
    "heliosdb-audit": "audited", "apsw-trigger": "audited",
    "heliosdb-enc-audit": "encrypted",
}
PEERS = {
    "plain": ["sqlite3", "apsw"],
    "encrypted": ["sqlcipher", "sqlite3mc", "sqlite3mc-aegis"],
    "audited": ["apsw-trigger"],
}
# where the class has no peer for a workload (W6, W8: triggers cannot chain), the
# hand-made plain APSW row is the peer
FALLBACK_PEER = {"audited": ["apsw"]}

LABELS = {
    "sqlite3": "stdlib sqlite3",
    "apsw": "plain APSW",
    "heliosdb": "heliosdb plain",
    "heliosdb-enc": "heliosdb encrypted",
    "heliosdb-audit": "heliosdb audited",
    "heliosdb-enc-audit": "heliosdb encrypted+audited",
    "sqlcipher": "SQLCipher (raw key)",
    "sqlite3mc": "sqlite3mc chacha20 (raw key)",
    "sqlite3mc-aegis": "sqlite3mc AEGIS (raw key)",
    "apsw-trigger": "APSW + audit triggers",
}


def add_ratios(cells, engines):
    for w, row in cells.items():
        base = row.get("apsw", {})
        b = base.get("median") if base.get("status") == "ok" else None
        hp = row.get("heliosdb", {})
        h = hp.get("median") if hp.get("status") == "ok" else None
        for e, c in row.items():
            if c.get("status") != "ok":
                continue
            c["ratio_apsw"] = c["median"] / b if b else None
            if e.startswith("heliosdb-") and h:
                c["ratio_heliosdb"] = c["median"] / h
            cls = ENGINE_CLASS.get(e)
            best = None
            for group in (PEERS.get(cls, []), FALLBACK_PEER.get(cls, [])):
                cands = [(row[p]["median"], p) for p in group
                         if p in row and row[p].get("status") == "ok"]
                if cands:
                    best = min(cands)
                    break
            if best:
                c["best_peer"] = best[1]
                c["ratio_best_peer"] = c["median"] / best[0]


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def machine():
    cpu = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
            break
    flags = _read("/proc/cpuinfo")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):  # read-only queries: they change nothing in the repository
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=10)
    try:
        commit = git("rev-parse", "--short", "HEAD").stdout.strip()
        if commit and (git("diff-index", "--quiet", "HEAD", "--").returncode != 0
                       or git("ls-files", "--others", "--exclude-standard").stdout.strip()):
            commit += " plus uncommitted changes"
    except Exception:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "aes_ni": " aes " in flags,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit,
    }


def workload_title(w, s):
    base, _, prof = w.partition(".")
    t = {
        "W1": f"bulk insert, {s['W1']:,} rows, one transaction",
        "W2": f"{s['W2']:,} autocommit inserts, WAL",
        "W3": f"{s['W3'][1]:,} point reads by PK, {s['W3'][0]:,} rows, default cache",
        "W3s": f"{s['W3'][1]:,} point reads by PK, {s['W3'][0]:,} rows, cache_size=-256",
        "W3c": f"{s['W3'][1]:,} point reads by PK within the first 2,000 rows (cached "
               f"working set), default cache",
        "W4": f"{s['W4'][1]} full scans of {s['W4'][0]:,} rows",
        "W5": f"{s['W5']:,} single-row INSERTs, transactions of 1,000, WAL",
        "W5m": f"{s['W5']:,} rows by executemany, 1,000 per call and transaction, WAL",
        "W5u": f"{s['W5u'][0]:,} UPDATEs by id, transactions of 1,000, WAL",
        "W6": f"verify {s['W6']:,} audit events",
        "W7": "open + first read, raw key (plain engines: no key), per open",
        "W7p": "open + first read with a passphrase, default KDF, per open",
        "W8": f"filtered audit queries on {s['W6']:,} events, per set of queries",
        "W9": f"key rotation of a {s['W9']} MB database",
    }[base]
    if prof:
        t = f"open + first read with a passphrase, heliosdb KDF profile '{prof}', per open"
    return t


def _fmt_s(x):
    if x is None:
        return ""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.001:
        return f"{x * 1000:.1f} ms"
    return f"{x * 1e6:.0f} us"


def _cell(x):
    """Text safe inside a Markdown table cell."""
    return " ".join(str(x if x is not None else "").replace("|", "/").split())


def _fmt_r(x):
    return "" if x is None else f"{x:.2f}"


def _extras(w, c):
    x = c.get("extra") or {}
    out = []
    for k, fmt in (("rows_per_s", "{:,.0f} rows/s"), ("commits_per_s", "{:,.0f} commits/s"),
                   ("reads_per_s", "{:,.0f} reads/s"), ("statements_per_s", "{:,.0f} stmt/s"),
                   ("events_per_s", "{:,.0f} events/s"), ("verify_over_scan", "{:.2f}x scan"),
                   ("verify_over_sha256", "{:.2f}x raw sha256"),
                   ("pages_per_s", "{:,.0f} pages/s"), ("file_mb", "{:.0f} MB file"),
                   ("cache_size", "cache_size {}"), ("events", "{:,} events"),
                   ("note", "{}"), ("api", "{}")):
        if k in x and x[k] is not None:
            try:
                out.append(fmt.format(int(x[k]) if k in ("events", "cache_size") else x[k]))
            except (ValueError, TypeError):
                pass
    if w.startswith("W6") and "scan_s" in x:
        out.append(f"scan {_fmt_s(x['scan_s'])} (via {x.get('scan_via', '?')}), raw sha256 "
                   f"{_fmt_s(x['sha256_s'])}")
    if isinstance(x.get("per_query_ms"), dict):
        out.append("per query: " + ", ".join(f"{k} {v} ms" for k, v in
                                             x["per_query_ms"].items()))
    return "; ".join(out)


def _status_cell(c):
    st = c.get("status")
    if st == "na":
        return "n/a"
    if st == "unavailable":
        return "unavail."
    if st == "error":
        return "error"
    return ""


ENC_WORKLOADS = ["W1", "W2", "W3", "W3s", "W3c", "W4", "W5", "W5m", "W5u", "W9"]


def targets(data):
    """DESIGN.md section 5 (and issue 5), checked against this run: (target, measured,
    verdict) rows. Verdicts are about this run on this machine, nothing more."""
    res = data["results"]

    def cell(w, e):
        c = res.get(w, {}).get(e)
        return c if c and c.get("status") == "ok" else None

    def why(w, e):
        if w not in res:
            return "not run (workload not selected)"
        c = res[w].get(e)
        if c is None:
            return "not run (engine not selected)"
        return f"not measured: {c.get('status')}: {c.get('reason')}"

    rows = []

    def ratio(label, w, e, limit, key="ratio_apsw", fmt="{:.2f}x APSW"):
        c = cell(w, e)
        if not c or c.get(key) is None:
            rows.append((label, why(w, e) if not c else "no APSW baseline", "-"))
            return
        v = c[key]
        rows.append((label, f"{e} {w}: " + fmt.format(v), "met" if v <= limit else "missed"))

    enc, aud = "heliosdb-enc", "heliosdb-audit"
    ratio("Encryption: bulk insert within 5% of plain APSW", "W1", enc, 1.05)
    ratio("Encryption: point reads, working set cached, within 3%", "W3c", enc, 1.03)
    ratio("Encryption: point reads that decrypt every page within 20%", "W3s", enc, 1.20)
    got = [(w, cell(w, enc)) for w in ENC_WORKLOADS if cell(w, enc)]
    if got:
        worse = [f"{w} ({c['ratio_best_peer']:.2f}x {c['best_peer']})" for w, c in got
                 if c.get("ratio_best_peer") is not None and c["ratio_best_peer"] >= 1]
        rows.append(("Encryption: better than SQLCipher and sqlite3mc on every workload",
                     f"{enc}: {len(got) - len(worse)} of {len(got)} workloads ahead of the "
                     f"best encrypted peer" + (f"; behind on {', '.join(worse)}" if worse
                                               else ""),
                     "met" if not worse else "missed"))
    else:
        rows.append(("Encryption: better than SQLCipher and sqlite3mc on every workload",
                     why("W1", enc), "-"))
    for w, what in (("W5", "single-row statements"), ("W5m", "executemany"),
                    ("W5u", "updates")):
        c, t = cell(w, aud), cell(w, "apsw-trigger")
        label = f"Audit: cheaper than audit triggers ({what})"
        if c and t:
            rows.append((label, f"{aud} {w}: {c['median'] / t['median']:.2f}x the triggers",
                         "met" if c["median"] < t["median"] else "missed"))
        else:
            rows.append((label, why(w, aud) if not c else why(w, "apsw-trigger"), "-"))
    ratio("Audit: at most 1.1x plain APSW on executemany", "W5m", aud, 1.10)
    ratio("Audit: at most 1.1x plain APSW on updates", "W5u", aud, 1.10)
    c = cell("W5", aud)
    if c and c["extra"].get("statements_per_s"):
        v = c["extra"]["statements_per_s"]
        rows.append(("Audit: >= 200k audited single-row statements/s", f"{v:,.0f}/s",
                     "met" if v >= 200_000 else "missed"))
    else:
        rows.append(("Audit: >= 200k audited single-row statements/s", why("W5", aud), "-"))
    ratio("Verify: full verify within 1.3x of a plain scan", "W6", aud, 1.3,
          key="verify_over_scan_", fmt="{:.2f}x scan")
    c = cell("W6", aud)
    if c:
        rows.pop()
        for label, k, limit, unit in (
                ("Verify: full verify within 1.3x of a plain scan", "verify_over_scan", 1.3,
                 "scan"),
                ("Verify: within 2x raw hashlib.sha256 over the same bytes (issue 5)",
                 "verify_over_sha256", 2.0, "raw sha256")):
            v = c["extra"].get(k)
            rows.append((label, f"{aud} W6: {v:.2f}x {unit}" if v else "-",
                         ("met" if v <= limit else "missed") if v else "-"))
    else:
        rows[-1] = (rows[-1][0], why("W6", aud), "-")
    c, b = cell("W7", enc), cell("W7", "apsw")
    label = "Open: a raw key opens well under 1 ms beyond plain APSW"
    if c and b:
        d = c["median"] - b["median"]
        rows.append((label, f"{enc} W7: +{d * 1e6:.0f} us", "met" if d < 0.001 else "missed"))
    else:
        rows.append((label, why("W7", enc) if not c else why("W7", "apsw"), "-"))
    c = cell("W7p", enc)
    rows.append(("Open: passphrase cost as configured (about 0.1 s, default Argon2id)",
                 f"{enc} W7p: {_fmt_s(c['median'])} per open" if c else why("W7p", enc),
                 "info" if c else "-"))
    c = cell("W8", aud)
    label = "Audit queries by user/operation/time: milliseconds on 1M events"
    if c:
        per = c["median"] / max(1, c["extra"].get("queries", 1))
        rows.append((label, f"{aud} W8: {_fmt_s(per)} per query on "
                     f"{int(c['extra'].get('events', 0)):,} events",
                     "met" if per <= 0.010 else "missed"))
    else:
        rows.append((label, why("W8", aud), "-"))
    return rows


def headlines(data):
    """One line per heliosdb engine: its main ratios, with the best peer's beside them."""
    res = data["results"]
    out = []

    def part(w, e, label):
        c = res.get(w, {}).get(e)
        if not c:
            return None
        if c.get("status") != "ok":
            return f"{label} {c.get('status')}"
        r = c.get("ratio_apsw")
        s = f"{label} {r:.2f}x" if r is not None else f"{label} {_fmt_s(c['median'])}"
        bp = c.get("best_peer")
        if bp and bp != e and bp != "apsw" and res[w][bp].get("ratio_apsw") is not None:
            s += f" ({bp} {res[w][bp]['ratio_apsw']:.2f}x)"
        return s

    groups = {
        "heliosdb-enc": [("W1", "bulk insert"), ("W3", "point reads"), ("W3s", "tiny cache"),
                         ("W3c", "cached reads"), ("W4", "full scans"), ("W2", "WAL commits"),
                         ("W9", "key rotation")],
        "heliosdb-audit": [("W5", "audited single-row DML"), ("W5m", "executemany"),
                           ("W5u", "updates"), ("W6", "verify"), ("W8", "audit queries")],
        "heliosdb-enc-audit": [("W1", "bulk insert"), ("W3", "point reads"),
                               ("W5", "audited single-row DML")],
        "heliosdb": [("W1", "bulk insert"), ("W3", "point reads"),
                     ("W5", "single-row DML")],
    }
    for e, parts in groups.items():
        if not data["engines"].get(e):
            continue
        if not data["engines"][e].get("available"):
            out.append(f"{LABELS[e]}: unavailable: {data['engines'][e].get('reason')}")
            continue
        ps = [p for p in (part(w, e, lab) for w, lab in parts) if p]
        if ps:
            out.append(f"{LABELS[e]}, time as a ratio to plain APSW (best peer in "
                       f"brackets): " + ", ".join(ps) + ".")
    c = res.get("W6", {}).get("heliosdb-audit")
    if c and c.get("status") == "ok":
        x = c["extra"]
        out.append(f"Verify of {int(x.get('events', 0)):,} events: {_fmt_s(c['median'])}, "
                   f"{x.get('verify_over_scan', 0):.2f}x a plain scan of the table, "
                   f"{x.get('verify_over_sha256', 0):.2f}x raw hashlib.sha256 over the same "
                   f"bytes.")
    return out


def markdown(data, engines, workloads):
    m = data["meta"]
    mc = m["machine"]
    res = data["results"]
    info = data["engines"]
    L = []
    L.append("# HeliosDB benchmark results")
    L.append("")
    L.append(f"Generated by `bench/run.py` ({m['mode']} sizes, {m['runs']} runs per engine "
             f"and workload, each in a fresh process, engines in a different order in "
             f"each run) on {m['date']}, in {m['duration_s']:.0f} s.")
    L.append("")
    L.append(f"**Machine:** {mc['cpu']}, {mc['cores']} cores"
             f"{' (AES-NI)' if mc.get('aes_ni') else ''}, {mc['memory']} RAM, {mc['os']}, "
             f"Python {mc['python']}; load average (1, 5, 15 min) at the start "
             f"{mc.get('loadavg_at_start', '?')}, at the end {mc['loadavg_at_end']}; "
             f"project commit {mc.get('git_commit') or '?'}.")
    L.append("")
    if m["notes"]:
        L.append("**Notes on this run:**")
        for n in m["notes"]:
            L.append(f"- {n}")
        L.append("")
    L.append("Commands: `make bench` (full sizes), `make bench-quick`; filters: "
             "`bench/run.py --engines a,b --workloads W1,W3`. Raw data: "
             f"`{m.get('json', 'bench/results/latest.json')}`.")
    L.append("")

    # engines
    L.append("## Engines")
    L.append("")
    L.append("| engine | status | module | SQLite | interpreter |")
    L.append("|---|---|---|---|---|")
    for e in engines:
        i = info.get(e, {})
        st = "available" if i.get("available") else f"unavailable: {i.get('reason')}"
        L.append(f"| {e} ({LABELS.get(e, e)}) | {_cell(st)} | {_cell(i.get('module'))} | "
                 f"{_cell(i.get('sqlite_version'))} | {_cell(i.get('python'))} |")
    L.append("")

    # summary matrix
    L.append("## Summary: median time as a ratio to plain APSW (lower is better)")
    L.append("")
    ws = [w for w in workloads]
    L.append("| engine | " + " | ".join(ws) + " |")
    L.append("|---|" + "---|" * len(ws))
    for e in engines:
        cells = []
        for w in ws:
            c = res[w][e]
            if c.get("status") == "ok":
                r = c.get("ratio_apsw")
                cells.append(_fmt_r(r) if r is not None else _fmt_s(c["median"]))
            else:
                cells.append(_status_cell(c))
        L.append(f"| {e} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("A cell shows seconds instead of a ratio where plain APSW has no such "
             "workload. n/a: the engine cannot do it; unavail.: the engine or its "
             "feature is missing (reason in the tables below).")
    L.append("")

    # headlines
    L.append("## Headlines")
    L.append("")
    for h in headlines(data):
        L.append(f"- {h}")
    L.append("")

    # targets
    L.append("## DESIGN.md targets, checked against this run")
    L.append("")
    if m["mode"] != "full":
        L.append("Quick sizes: most timings here are a few milliseconds, so these verdicts "
                 "are a smoke check, not evidence; quote only a full run.")
        L.append("")
    elif m["notes"]:
        L.append("(Some sizes differ from the full ones in this run: see the notes above.)")
        L.append("")
    L.append("| target | measured | verdict |")
    L.append("|---|---|---|")
    for t, v, verdict in targets(data):
        L.append(f"| {_cell(t)} | {_cell(v)} | {verdict} |")
    L.append("")

    # workloads
    L.append("## Per workload")
    L.append("")
    L.append("Median and spread (min-max) in seconds (ms/us where marked); x APSW = "
             "median / plain APSW's median; x heliosdb plain = the cost of encryption "
             "and/or audit over heliosdb's own DB-API layer; x best peer = median / the fastest of the "
             "engines a user would pick instead (plain: stdlib sqlite3, APSW; encrypted: "
             "SQLCipher, sqlite3mc; audited: the trigger baseline, or the hand-made "
             "plain APSW row where triggers cannot do the job). heliosdb encrypted+audited "
             "is compared with the encrypted peers, which audit nothing.")
    L.append("")
    for w in workloads:
        L.append(f"### {w}: {data['workloads'][w]}")
        L.append("")
        L.append("| engine | median | spread | x APSW | x heliosdb plain | x best peer | notes |")
        L.append("|---|---|---|---|---|---|---|")
        for e in engines:
            c = res[w][e]
            if c.get("status") == "ok":
                bp = c.get("best_peer")
                rb = c.get("ratio_best_peer")
                L.append(f"| {e} | {_fmt_s(c['median'])} | {_fmt_s(c['min'])} - "
                         f"{_fmt_s(c['max'])} | {_fmt_r(c.get('ratio_apsw'))} | "
                         f"{_fmt_r(c.get('ratio_heliosdb'))} | "
                         f"{(_fmt_r(rb) + ' (' + bp + ')') if bp else ''} | "
                         f"{_cell(_extras(w, c))} |")
            elif c.get("status") == "na":
                continue  # grouped below
            elif c.get("status") != "unavailable" or info.get(e, {}).get("available"):
                L.append(f"| {e} | {_status_cell(c)} | | | | | {_cell(c.get('reason'))} |")
        by_reason = {}
        for e in engines:
            if res[w][e].get("status") == "na":
                by_reason.setdefault(res[w][e].get("reason") or "", []).append(e)
        for reason, es in by_reason.items():
            L.append(f"| *n/a* | | | | | | {', '.join(es)}: {_cell(reason)} |")
        gone = [e for e in engines if res[w][e].get("status") == "unavailable"
                and not info.get(e, {}).get("available")]
        if gone:
            L.append(f"| *unavailable engines* | | | | | | {', '.join(gone)} |")
        L.append("")

    L.append("## Method")
    L.append("")
    L.append("- Only the workload body is timed (`time.perf_counter`); data generation, "
             "fixture databases (built once per invocation, copied for each run), opening "
             "(except W7) and closing are not.")
    L.append("- Rows of table `t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL)` are "
             "about 100 bytes; page size 4096 (each engine's default), mmap off, "
             "journal_mode DELETE except W2/W5* (WAL, synchronous=NORMAL). DB-API engines "
             "run with `isolation_level=None` and explicit BEGIN/COMMIT, like APSW.")
    L.append("- Encrypted peers get a raw 256-bit key (`PRAGMA key = \"x'...'\"`), so that "
             "W1-W5 and W9 compare page costs, not key derivation; W7p measures each "
             "engine's default passphrase KDF.")
    L.append("- W5/W5m/W5u run on every engine: on plain engines they are the cost of the "
             "DML itself, so the ratio of an audited engine is its audit overhead. The "
             "trigger baseline writes (operation, table, rowid, UTC time) per row; "
             "heliosdb writes one chained event per statement (an executemany call is one "
             "event carrying its row count), with actor, session and metadata.")
    L.append("- W6 on plain APSW: a hand-made chained table of the same number of events "
             "(about 200 bytes each), verified by Python hashlib over the fetched rows. For "
             "every W6 row, notes give a plain scan of the same table (every row fetched) "
             "and raw `hashlib.sha256` chained over the same bytes, held in memory.")
    L.append("- W8 on plain APSW: the same hand-made table with indexes on timestamp, "
             "user, operation and target.")
    L.append("- W9 on plain APSW: `VACUUM` (every page rewritten once), as the baseline.")
    L.append("- Timings on a shared 2-core machine are noisy; compare ratios from one run, "
             "never numbers across runs.")
    L.append("")
    return "\n".join(L)


def chart(data, engines, workloads, path):
    """A PNG of the ratios to plain APSW, only if matplotlib is already installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    res = data["results"]
    ws = [w for w in workloads if res[w].get("apsw", {}).get("status") == "ok"]
    es = [e for e in engines if any(res[w][e].get("ratio_apsw") for w in ws)]
    if not ws or not es:
        return None
    fig, ax = plt.subplots(figsize=(max(8, len(ws) * 1.2), 5))
    width = 0.8 / len(es)
    for i, e in enumerate(es):
        ys = [res[w][e].get("ratio_apsw") or 0 for w in ws]
        ax.bar([j + i * width for j in range(len(ws))], ys, width, label=e)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ws))], ws)
    ax.set_ylabel("median time / plain APSW")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
