"""Crash loop (issue 9, part 1): kill -9 an encrypted, audited writer at random moments.

A child process runs a mixed workload on an encrypted database with the audit log on
(presets "default" and "verbose" alternately), in WAL mode or in a rollback-journal mode
(DELETE, TRUNCATE, PERSIST in turn, with a tiny page cache in some rounds so that big
transactions spill pages into the database file before they commit and leave a hot
journal). Every transaction tags its SQL text with ``'tx<N>'`` and writes a line to a side
file before it starts (``B {json}``: the exact operations) and after ``commit()`` returned
(``C <N>``; ``R <N>`` after a deliberate rollback), each line fsynced.

After each kill the checker opens the file with heliosdb (which recovers the hot journal or
the WAL) and requires:

* ``PRAGMA integrity_check`` is ok, ``conn.audit.verify()`` and
  ``heliosdb.audit.verify(path)`` are ok, event ids are 1..n without a gap;
* the table equals the model (every transaction the child reported committed, applied in
  order) or, for the one transaction in flight at the kill, the model with it applied;
  nothing else: no half transaction, no rolled-back change, every value is the one
  written;
* every committed transaction has its events (success = 1, the affected row counts of its
  INSERT, UPDATE and DELETE events sum to what it changed), and no transaction that did
  not commit has an event claiming success.

Fast: 6 kills per journal kind. Slow (``make stress``): 30 per kind, 60 in all.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import heliosdb
from heliosdb import native

from helpers.reliability import KEY, TAG_RE, child_env, payload, read_state

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

CHILD = r"""
import json, os, random, sys
import heliosdb
from helpers.reliability import KEY, payload
path, side, jmode, cfg, start, seed, small = sys.argv[1:8]
start, seed, small = int(start), int(seed), small == "1"
rng = random.Random(seed)
conn = heliosdb.connect(path, key=KEY, config=cfg, audit_user="crash", timeout=30)
auto = heliosdb.connect(path, key=KEY, config=cfg, audit_user="auto", timeout=30,
                        isolation_level=None)
conn.execute("PRAGMA journal_mode=" + jmode)
conn.execute("CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, n INTEGER NOT NULL, "
             "tag TEXT NOT NULL, v BLOB NOT NULL)")
conn.commit()
if small:
    conn.execute("PRAGMA cache_size=8")
    auto.execute("PRAGMA cache_size=8")
live = sorted(k for (k,) in conn.execute("SELECT k FROM t"))
sidef = open(side, "a")

def note(line):
    sidef.write(line + "\n")
    sidef.flush()
    os.fsync(sidef.fileno())

def ins_sql(tag, n=1):
    return "INSERT INTO t(k, n, tag, v) VALUES " + ", ".join(["(?, 0, '%s', ?)" % tag] * n)

def pick(n):
    return rng.sample(live, min(n, len(live)))

print("ready", flush=True)
tx = start
while True:
    tx += 1
    tag = "tx%d" % tx
    kinds = ["ins", "ins", "big", "upd", "del", "mix", "rb", "auto", "autoupd"]
    if jmode == "wal":
        kinds.append("ckpt")
    kind = rng.choice(kinds)
    if kind == "ckpt":
        conn.execute("PRAGMA wal_checkpoint(%s)" % rng.choice(["PASSIVE", "TRUNCATE"]))
        continue
    new = [tx * 1000 + i for i in range(rng.randint(1, 5) if kind != "big" else rng.randint(60, 250))]
    ops = []
    if kind in ("ins", "big"):
        ops = [["I", new]]
    elif kind == "upd":
        ops = [["U", pick(rng.randint(1, 4))]]
    elif kind == "del":
        ops = [["D", pick(rng.randint(1, 2))]]
    elif kind == "mix":
        u = pick(2)
        d = [k for k in pick(3) if k not in u][:1]
        ops = [["I", new[:2]], ["U", u], ["X", []], ["D", d]]
    elif kind == "rb":
        ops = [["I", new], ["U", pick(2)]]
    elif kind == "auto":
        ops = [["I", new[:3]]]
    elif kind == "autoupd":
        ops = [["U", pick(1)]]
    ops = [o for o in ops if o[1] or o[0] == "X"]
    if not ops:
        continue
    note("B " + json.dumps({"tx": tx, "kind": kind, "ops": ops}))
    if kind in ("auto", "autoupd"):
        op, keys = ops[0]
        if op == "I":
            auto.execute(ins_sql(tag, len(keys)), [x for k in keys for x in (k, payload(k))])
        else:
            auto.execute("UPDATE t SET n = n + 1, tag = '%s' WHERE k IN (SELECT value FROM "
                         "json_each(?))" % tag, (json.dumps(keys),))
        note("C %d" % tx)
    else:
        for op, keys in ops:
            if op == "I":
                conn.executemany(ins_sql(tag), [(k, payload(k)) for k in keys])
            elif op == "U":
                conn.execute("UPDATE t SET n = n + 1, tag = '%s' WHERE k IN (SELECT value "
                             "FROM json_each(?))" % tag, (json.dumps(keys),))
            elif op == "D":
                conn.execute("DELETE FROM t WHERE k IN (SELECT value FROM json_each(?)) "
                             "AND '%s' <> ''" % tag, (json.dumps(keys),))
            elif op == "X" and live:
                try:   # a failed statement inside the transaction: its own failure event
                    conn.execute(ins_sql(tag), (live[0], b"dup"))
                    raise SystemExit("duplicate key accepted")
                except heliosdb.IntegrityError:
                    pass
        if kind == "rb":
            conn.rollback()
            note("R %d" % tx)
            continue
        conn.commit()
        note("C %d" % tx)
    for op, keys in ops:
        if op == "I":
            live.extend(keys)
        elif op == "D":
            live = [k for k in live if k not in keys]
    live.sort()
"""


def apply(model: dict, rec: dict) -> dict:
    m = dict(model)
    tag = "tx%d" % rec["tx"]
    for op, keys in rec["ops"]:
        for k in keys:
            if op == "I":
                assert k not in m
                m[k] = (0, tag, payload(k))
            elif op == "U":
                n, _t, v = m[k]
                m[k] = (n + 1, tag, v)
            elif op == "D":
                del m[k]
    return m


def expected_counts(rec: dict) -> dict:
    out = {"INSERT": 0, "UPDATE": 0, "DELETE": 0}
    for op, keys in rec["ops"]:
        name = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}.get(op)
        if name:
            out[name] += len(keys)
    return out


class Crasher:
    def __init__(self, tmp_path, jkind: str, seed: int):
        self.dir = tmp_path / jkind
        self.dir.mkdir()
        self.path = str(self.dir / "crash.db")
        self.side = str(self.dir / "side.log")
        self.jkind = jkind
        self.rng = random.Random(seed)
        self.model: dict = {}
        self.committed: set = set()    # tx numbers known committed
        self.uncommitted: set = set()  # rolled back, or in flight at a kill and lost
        self.side_pos = 0
        self.kills = 0
        self.inflight_committed = 0
        self.inflight_lost = 0
        self.events = 0
        self.all_recs: list = []

    def round(self, n: int) -> None:
        jmode = "wal" if self.jkind == "wal" else ["delete", "truncate", "persist"][n % 3]
        cfg = ["default", "verbose"][n % 2]
        small = "1" if (self.jkind != "wal" and n % 2 == 0) else "0"
        p = subprocess.Popen([sys.executable, "-c", CHILD, self.path, self.side, jmode, cfg,
                              str(1_000_000 * (n + 1)), str(self.rng.randrange(1 << 30)), small],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_env())
        if self.rng.random() < 0.15:
            # Sometimes kill early: during start-up, while the child recovers the last crash.
            time.sleep(self.rng.uniform(0.0, 0.4))
        else:
            line = p.stdout.readline()
            if line.strip() != "ready":
                p.kill()
                _out, err = p.communicate()
                raise AssertionError(f"child failed to start: {line!r}\n{err}")
            time.sleep(self.rng.uniform(0.0, 0.5))
        p.send_signal(signal.SIGKILL)
        _out, err = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, f"child ended by itself ({p.returncode}): {err}"
        self.kills += 1
        self.check(cfg)

    def side_records(self):
        with open(self.side) as f:
            f.seek(self.side_pos)
            data = f.read()
        # Everything was fsynced line by line; a last line cut by the kill has no newline.
        complete, _sep, _partial = data.rpartition("\n")
        self.side_pos += len(complete) + (1 if _sep else 0)
        recs, status = [], {}
        for ln in complete.split("\n") if complete else []:
            kind, _sp, rest = ln.partition(" ")
            if kind == "B":
                recs.append(json.loads(rest))
            else:
                status[int(rest)] = kind
        return recs, status

    def check(self, cfg: str) -> None:
        recs, status = (self.side_records() if os.path.exists(self.side) else ([], {}))
        self.all_recs.extend(recs)
        pending = None
        for i, rec in enumerate(recs):
            st = status.get(rec["tx"])
            if st == "C":
                self.model = apply(self.model, rec)
                self.committed.add(rec["tx"])
            elif st == "R":
                self.uncommitted.add(rec["tx"])
            else:
                assert i == len(recs) - 1, f"tx {rec['tx']} neither committed nor rolled back"
                pending = rec
        conn = heliosdb.connect(self.path, key=KEY, config=cfg, audit_user="checker")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            rep = conn.audit.verify()
            assert rep.ok, rep
            state = read_state(conn) if conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 't'").fetchall() else {}
            evs = conn.execute("SELECT id, operation, query, affected_rows, success "
                               "FROM __audit_log ORDER BY id").fetchall()
        finally:
            conn.close()
        rep = heliosdb.audit.verify(self.path, key=KEY)
        assert rep.ok, rep
        assert [e[0] for e in evs] == list(range(1, len(evs) + 1)), "event ids have a gap"
        self.events = len(evs)
        for k, (_n, _tag, v) in state.items():
            assert v == payload(k), f"row {k}: a value that was never written"
        if pending is not None:
            with_it = apply(self.model, pending)
            if state == with_it and state != self.model:
                self.model = with_it
                self.committed.add(pending["tx"])
                self.inflight_committed += 1
            else:
                assert state == self.model, self.diff(state, pending)
                self.uncommitted.add(pending["tx"])
                self.inflight_lost += 1
        else:
            assert state == self.model, self.diff(state, None)
        # Events: per committed transaction, the changed row counts; none claim success
        # for a transaction that did not commit.
        sums: dict = {}
        for _id, op, query, affected, ok in evs:
            m = TAG_RE.search(query or "")
            if not m or op not in ("INSERT", "UPDATE", "DELETE"):
                continue
            tx = int(m.group(1))
            if ok:
                assert tx not in self.uncommitted, f"event {_id}: success for lost tx {tx}"
                assert tx in self.committed, f"event {_id}: success for unknown tx {tx}"
                d = sums.setdefault(tx, {"INSERT": 0, "UPDATE": 0, "DELETE": 0})
                d[op] += affected or 0
        for rec in self.all_recs:
            if rec["tx"] in self.committed:
                exp = expected_counts(rec)
                got = sums.get(rec["tx"], {"INSERT": 0, "UPDATE": 0, "DELETE": 0})
                assert got == exp, f"tx {rec['tx']} ({rec['kind']}): events {got}, expected {exp}"

    def diff(self, state, pending):
        extra = sorted(set(state) - set(self.model))[:5]
        missing = sorted(set(self.model) - set(state))[:5]
        changed = sorted(k for k in set(state) & set(self.model) if state[k] != self.model[k])[:5]
        return (f"table differs from the committed model: extra {extra}, missing {missing}, "
                f"changed {[(k, state[k][:2], self.model[k][:2]) for k in changed]}, "
                f"in flight {pending}")


def crash_loop(tmp_path, jkind: str, kills: int, seed: int) -> Crasher:
    c = Crasher(tmp_path, jkind, seed)
    for n in range(kills):
        c.round(n)
    assert c.committed, "no transaction committed in any round"
    raw = open(c.path, "rb").read()
    assert b"crash" not in raw and b"INSERT INTO" not in raw and payload(1_000_001 * 1000)[:32] not in raw
    print(f"\n[crash {jkind}] kills={c.kills} committed_tx={len(c.committed)} "
          f"lost_or_rolled_back={len(c.uncommitted)} inflight_committed={c.inflight_committed} "
          f"inflight_lost={c.inflight_lost} rows={len(c.model)} events={c.events}")
    return c


@pytest.mark.parametrize("jkind", ["wal", "rollback"])
def test_crash_loop_fast(tmp_path, jkind):
    crash_loop(tmp_path, jkind, kills=6, seed=9)


@pytest.mark.slow
@pytest.mark.parametrize("jkind", ["wal", "rollback"])
def test_crash_loop_slow(tmp_path, jkind):
    crash_loop(tmp_path, jkind, kills=30, seed=2026)


def test_checker_is_not_vacuous(tmp_path):
    """The model check catches an unaudited change and a value that was never written."""
    c = Crasher(tmp_path, "wal", 1)
    c.round(0)
    import apsw
    from heliosdb.crypto import open_connection
    db = open_connection(c.path, flags=apsw.SQLITE_OPEN_READWRITE, uri=False, key=KEY,
                         encryption=None)
    db.execute("INSERT INTO t VALUES (7, 0, 'tx7', x'00')")   # no event, not in the model
    db.close()
    with pytest.raises(AssertionError):
        c.check("default")
