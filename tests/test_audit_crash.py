"""Crash safety of statement capture: kill -9 a writer at random moments.

After every kill: every committed change has its audit event (exactly one), no event
claims a change that did not commit (a rolled-back or failed attempt may appear, with
success = 0), everything the writer saw committed is there, and the chain verifies with
gapless ids. Plain and encrypted databases, C and pure chain writers. The fast suite
kills 5 times per chain implementation; ``-m slow`` runs 25 kills per database kind.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import apsw
import pytest

import heliosdb

KEY = bytes(range(32))

# The writer: a mixed workload with commits, rollbacks, autocommit statements, executemany
# batches, constraint failures and updates; prints each key once its commit returned.
WRITER = r"""
import os, sys, heliosdb
from heliosdb.audit import chain
path, start, keyhex, impl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
assert chain.__impl__ == impl, (chain.__impl__, impl)  # HELIOSDB_IMPL chose it at import
key = bytes.fromhex(keyhex) if keyhex != "-" else None
conn = heliosdb.connect(path, config="verbose", key=key, audit_user="writer", timeout=30)
auto = heliosdb.connect(path, config="verbose", key=key, audit_user="auto", timeout=30,
                        isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
conn.commit()
print("ready", flush=True)
k = start
last = None
i = 0
while True:
    mode = i % 7
    i += 1
    if mode == 0:
        conn.execute("INSERT INTO t(k, n) VALUES (?, 0)", (k,))
        conn.commit(); print(k, flush=True); last = k; k += 1
    elif mode == 1:
        conn.execute("INSERT INTO t(k, n) VALUES (?, 0)", (k,))
        conn.rollback(); k += 1
    elif mode == 2:
        auto.execute("INSERT INTO t(k, n) VALUES (?, 0)", (k,))
        print(k, flush=True); last = k; k += 1
    elif mode == 3:
        conn.executemany("INSERT INTO t(k, n) VALUES (?, 0)", [(k,), (k + 1,), (k + 2,)])
        conn.commit(); print(k, k + 1, k + 2, flush=True); last = k + 2; k += 3
    elif mode == 4 and last is not None:
        try:
            conn.execute("INSERT INTO t(k, n) VALUES (?, 0)", (last,))
        except heliosdb.IntegrityError:
            pass
        conn.execute("UPDATE t SET n = n + 1 WHERE k = ?", (last,))
        conn.commit()
    elif mode == 5 and last is not None:
        conn.execute("UPDATE t SET n = n + 1 WHERE k = ?", (last,))
        conn.execute("SELECT n FROM t WHERE k = ?", (last,)).fetchall()
        conn.rollback()
    elif mode == 6 and last is not None:
        auto.execute("UPDATE t SET n = n + 1 WHERE k = ?", (last,))
"""


def _open(path, key):
    if key is None:
        return apsw.Connection(path)
    from heliosdb.crypto import open_connection
    return open_connection(path, flags=apsw.SQLITE_OPEN_READWRITE, uri=False, key=key,
                           encryption=None)


def kill_once(path, key, impl, start, rng):
    """Start the writer, kill -9 it at a random moment; return the keys it saw committed."""
    # HELIOSDB_IMPL, not HELIOSDB_PURE=1: that would also turn encryption off.
    env = dict(os.environ, HELIOSDB_IMPL=impl)
    env.pop("HELIOSDB_PURE", None)
    p = subprocess.Popen([sys.executable, "-c", WRITER, path, str(start),
                          key.hex() if key else "-", impl],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"writer failed to start: {line!r} {err}")
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(p.pid, signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, err
    seen = set()
    lines = out.split("\n")
    for ln in lines[:-1]:  # the last line may be cut mid-write
        seen.update(int(x) for x in ln.split())
    return seen


def check_consistent(path, key, seen):
    # First, as an auditor would: verify the file the killed writer left (hot journal and
    # all), before anything else opens it.
    rep = heliosdb.audit.verify(path, key=key)
    assert rep.ok, rep
    db = _open(path, key)
    try:
        rows = dict(db.execute("SELECT k, n FROM t"))
        evs = list(db.execute("SELECT id, operation, success, new_values FROM __audit_log "
                              "ORDER BY id"))
    finally:
        db.close()
    assert [e[0] for e in evs] == list(range(1, len(evs) + 1)), "ids are not gapless"
    inserted: list[int] = []
    failed: set[int] = set()
    updates: dict[int, int] = {}
    for _id, op, ok, new in evs:
        keys = [r["rowid"] for r in json.loads(new)] if new else []
        if op == "INSERT":
            (inserted.extend(keys) if ok else failed.update(keys))
        elif op == "UPDATE" and ok:
            for k in keys:
                updates[k] = updates.get(k, 0) + 1
    assert seen <= set(rows), "a change the writer saw committed is missing"
    assert sorted(inserted) == sorted(rows), "committed rows and INSERT events disagree"
    assert not (failed & set(rows)), "a failed/rolled-back INSERT event names a committed row"
    for k, n in rows.items():
        assert updates.get(k, 0) == n, f"row {k}: n={n} but {updates.get(k, 0)} UPDATE events"
    return len(evs)


def crash_loop(tmp_path, impl, kills, seed):
    from heliosdb import native
    kinds = [("plain", None)]
    if native.available():
        kinds.append(("encrypted", KEY))
    rng = random.Random(seed)
    total = 0
    for n in range(kills):
        name, key = kinds[n % len(kinds)]
        path = str(tmp_path / f"{name}.db")
        seen = kill_once(path, key, impl, start=1 + 100_000 * n, rng=rng)
        total += check_consistent(path, key, seen)
    if native.available():
        raw = open(tmp_path / "encrypted.db", "rb").read()
        assert b"writer" not in raw and b"INSERT INTO" not in raw  # the log is encrypted too
    return total


def test_crash_kill9_fast(tmp_path, chain_impl):
    assert crash_loop(tmp_path, chain_impl, kills=5, seed=5) > 0


@pytest.mark.slow
def test_crash_kill9_many(tmp_path, chain_impl):
    assert crash_loop(tmp_path, chain_impl, kills=50, seed=50) > 0


def test_verify_path_after_crash_with_hot_journal(tmp_path):
    """heliosdb.audit.verify(path) right after a crash: a read-only connection cannot roll
    back the hot journal (SQLITE_READONLY_ROLLBACK), so verify must recover it first."""
    path = str(tmp_path / "hot.db")
    conn = heliosdb.connect(path, config="default")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    # A writer dies after its small page cache spilled into the database file: the
    # journal is hot and must be rolled back before anyone may read.
    code = ("import apsw, os, sys; c = apsw.Connection(sys.argv[1]); "
            "c.execute('PRAGMA cache_size = 2'); c.execute('BEGIN'); "
            "c.execute('WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
            "WHERE i < 300) INSERT INTO t SELECT randomblob(1000) FROM r'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, path], check=True)
    assert os.path.exists(path + "-journal")
    assert heliosdb.audit.verify(path).ok


def test_checker_detects_unaudited_and_phantom_changes(tmp_path):
    """The consistency check above is not vacuous."""
    path = str(tmp_path / "c.db")
    conn = heliosdb.connect(path, config="verbose")
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    conn.execute("INSERT INTO t VALUES (1, 0)")
    conn.commit()
    conn.close()
    assert check_consistent(path, None, {1}) > 0
    with pytest.raises(AssertionError, match="missing"):
        check_consistent(path, None, {1, 2})
    raw = apsw.Connection(path)
    raw.execute("INSERT INTO t VALUES (2, 0)")            # a change without its event
    with pytest.raises(AssertionError, match="disagree"):
        check_consistent(path, None, {1})
    raw.execute("DELETE FROM t WHERE k = 2")
    raw.execute("UPDATE t SET n = 5 WHERE k = 1")         # an update without its event
    with pytest.raises(AssertionError, match="UPDATE events"):
        check_consistent(path, None, {1})
    raw.close()
