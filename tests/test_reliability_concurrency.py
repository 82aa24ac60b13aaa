"""Concurrency (issue 9, part 2): 4 writer and 4 reader processes on one encrypted,
audited database in WAL mode, every connection with ``timeout=30``.

Each writer runs a fixed number of transactions (two inserted rows and an increment of a
shared, contended counter row), some of them as autocommit statements; readers loop over
counts, range reads and ``conn.audit.verify()`` until the writers are done. Afterwards:
the row count, the counter and every event count are exact, the chain is one linear chain
(verify ok, ids 1..n, every prev_hash the checksum of the event before), and no process saw
any exception (in particular no ``database is locked``: a busy timeout was set).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import heliosdb
from heliosdb import native

from helpers.reliability import KEY, child_env

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

WRITER = r"""
import json, os, sys, time
import heliosdb
from helpers.reliability import KEY, payload
path, wid, ntx, go, iso = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
conn = heliosdb.connect(path, key=KEY, config="default", audit_user="w%d" % wid, timeout=30,
                        isolation_level=None if iso == "none" else iso)
auto = heliosdb.connect(path, key=KEY, config="default", audit_user="a%d" % wid, timeout=30,
                        isolation_level=None)
while not os.path.exists(go):
    time.sleep(0.005)
stats = {"tx": 0, "auto": 0}
for i in range(ntx):
    k = wid * 1_000_000 + i * 10
    if i % 5 == 4:
        auto.execute("INSERT INTO t(k, w, v) VALUES (?, ?, ?), (?, ?, ?)",
                     (k, wid, payload(k), k + 1, wid, payload(k + 1)))
        auto.execute("UPDATE counters SET n = n + 1 WHERE id = 1")
        stats["auto"] += 1
        continue
    if iso == "none":
        conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(k, w, v) VALUES (?, ?, ?)",
                     [(k, wid, payload(k)), (k + 1, wid, payload(k + 1))])
    conn.execute("UPDATE counters SET n = n + 1 WHERE id = 1")
    conn.commit() if iso != "none" else conn.execute("COMMIT")
    stats["tx"] += 1
conn.close()
auto.close()
print(json.dumps(stats))
"""

READER = r"""
import json, os, sys, time
import heliosdb
from helpers.reliability import payload
from helpers.reliability import KEY
path, rid, go, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = heliosdb.connect(path, key=KEY, config="default", audit_user="r%d" % rid, timeout=30)
while not os.path.exists(go):
    time.sleep(0.005)
last_rows = last_n = last_ev = 0
stats = {"reads": 0, "verifies": 0}
i = 0
while True:
    done = os.path.exists(stop)
    rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    n = conn.execute("SELECT n FROM counters WHERE id = 1").fetchone()[0]
    assert rows >= last_rows and n >= last_n, (rows, last_rows, n, last_n)
    last_rows, last_n = rows, n
    for k, v in conn.execute("SELECT k, v FROM t WHERE k % 7 = ? LIMIT 50", (i % 7,)):
        assert bytes(v) == payload(k), k
    stats["reads"] += 1
    if i % 8 == rid % 8:
        rep = conn.audit.verify()
        assert rep.ok, rep
        assert rep.events_checked >= last_ev
        last_ev = rep.events_checked
        stats["verifies"] += 1
    conn.commit()
    i += 1
    if done:
        break
conn.close()
print(json.dumps(stats))
"""


def run_concurrency(tmp_path, ntx: int):
    path = str(tmp_path / "conc.db")
    go, stop = str(tmp_path / "go"), str(tmp_path / "stop")
    setup = heliosdb.connect(path, key=KEY, config="default", audit_user="setup")
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, w INTEGER NOT NULL, v BLOB NOT NULL)")
    setup.execute("CREATE TABLE counters(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    setup.execute("INSERT INTO counters VALUES (1, 0)")
    setup.commit()
    setup.close()
    isos = ["", "IMMEDIATE", "DEFERRED", "none"]
    env = child_env()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), str(ntx), go,
                                 isos[w]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for w in range(4)]
    readers = [subprocess.Popen([sys.executable, "-c", READER, path, str(r), go, stop],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for r in range(4)]
    time.sleep(0.5)
    open(go, "w").close()
    outs = []
    try:
        for p in writers:
            out, err = p.communicate(timeout=600)
            outs.append((p.returncode, out, err))
    finally:
        open(stop, "w").close()
        for p in readers:
            out, err = p.communicate(timeout=600)
            outs.append((p.returncode, out, err))
    for rc, out, err in outs:
        assert "locked" not in err and "busy" not in err.lower(), err
        assert rc == 0, err
    wstats = [json.loads(o[1]) for o in outs[:4]]
    rstats = [json.loads(o[1]) for o in outs[4:]]
    verifies = sum(s["verifies"] for s in rstats)

    conn = heliosdb.connect(path, key=KEY, config="default", audit_user="checker")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 4 * ntx * 2
        assert conn.execute("SELECT w, count(*) FROM t GROUP BY w ORDER BY w").fetchall() == \
            [(w, 2 * ntx) for w in range(4)]
        assert conn.execute("SELECT n FROM counters").fetchone()[0] == 4 * ntx
        rep = conn.audit.verify()
        assert rep.ok, rep
        evs = conn.execute("SELECT id, user, operation, affected_rows, success, prev_hash, "
                           "checksum FROM __audit_log ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [e[0] for e in evs] == list(range(1, len(evs) + 1))
    for a, b in zip(evs, evs[1:]):
        assert b[5] == a[6], f"event {b[0]} does not continue event {a[0]}: a fork"
    assert all(e[4] == 1 for e in evs), [e for e in evs if e[4] != 1][:3]
    counts: dict = {}
    for _id, user, op, aff, _ok, _p, _c in evs:
        key = (user[0], op)
        c = counts.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += aff or 0
    n_tx = sum(s["tx"] for s in wstats)
    n_auto = sum(s["auto"] for s in wstats)
    assert n_tx + n_auto == 4 * ntx
    assert counts.pop(("w", "INSERT")) == [n_tx, 2 * n_tx]
    assert counts.pop(("w", "UPDATE")) == [n_tx, n_tx]
    assert counts.pop(("a", "INSERT")) == [n_auto, 2 * n_auto]
    assert counts.pop(("a", "UPDATE")) == [n_auto, n_auto]
    for who, n in (("w", 4), ("a", 4), ("r", 4)):
        assert counts.pop((who, "LOGIN"))[0] == n
        assert counts.pop((who, "LOGOUT"))[0] == n
    # The set-up and checker connections' own session events (LOGIN, the PRAGMAs, the
    # first record of the audit config) are not what this test counts.
    for who in ("s", "c"):
        for op in ("LOGIN", "LOGOUT", "PRAGMA", "AUDIT_CONFIG_CHANGE"):
            counts.pop((who, op), None)
    assert counts.pop(("s", "CREATE_TABLE"))[0] == 2
    assert counts.pop(("s", "INSERT"))[0] == 1
    verify_events = counts.pop(("r", "VERIFY"), [0])[0]
    assert verify_events in (0, verifies), (verify_events, verifies)
    assert not counts, f"unexpected events: {counts}"
    print(f"\n[concurrency] writers=4 readers=4 tx={4 * ntx} events={len(evs)} "
          f"reader_iterations={sum(s['reads'] for s in rstats)} verifies={verifies}")
    return len(evs)


def test_concurrency_fast(tmp_path):
    run_concurrency(tmp_path, ntx=50)


@pytest.mark.slow
def test_concurrency_slow(tmp_path):
    run_concurrency(tmp_path, ntx=1500)
