"""Hostile input (issue 9, part 3): corrupted files, malformed configs, bad keys, odd SQL.

Anything that reaches the C shim or SQLite runs in a *worker* subprocess (a segfault
there fails one input, not pytest), one request at a time, each with a timeout (a hang
fails the input). Rules for every input:

* only ``heliosdb`` exceptions come out (never an ``apsw`` exception, never a crash or
  hang); a key of the wrong type or length is a ``heliosdb.ProgrammingError``; for odd
  SQL parameters, the builtin exception that ``sqlite3`` itself raises for the same input
  is accepted (``OverflowError``, ``UnicodeEncodeError``);
* never wrong data returned as valid: a damaged database either fails, or returns exactly
  what was written (a flip in a byte nobody reads), or, for a damaged WAL, exactly the
  state after one of the earlier commits (SQLite ends the log at the first bad frame).

Corruption targets: the main file's pages, the 4096-byte HeliosDB header, the WAL of a
live database (frames past a checkpoint), and the hot rollback journal left by a writer
that died with its cache spilled. Mutations: bit flips, byte overwrites, random runs,
zeroed ranges, truncations, appended garbage, pages swapped or duplicated. A seeded random
fuzzer and hypothesis both feed the worker.
"""
from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import heliosdb
from heliosdb import native

from helpers.reliability import KEY, child_env, payload, run_child

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

HSET = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                   HealthCheck.data_too_large])

# ------------------------------------------------------------------ pristine files ------

ROWS0 = {k: payload(k) for k in range(1, 41)}


def wal_states():
    """The table after each commit of MAKE_WAL: S0 (checkpointed) .. S5 (in the WAL)."""
    states = [dict(ROWS0)]
    for c in range(1, 6):
        s = dict(states[-1])
        for k in range(c * 100, c * 100 + 6):
            s[k] = payload(k)
        for k in list(s)[:c * 3]:
            s[k] = payload(k + 7)
        states.append(s)
    return states


MAKE = textwrap.dedent(r"""
    import json, os, shutil, sys
    import heliosdb
    from helpers.reliability import KEY, payload
    kind, d = sys.argv[1], sys.argv[2]
    rows0 = {k: payload(k) for k in range(1, 41)}
    if kind == "main":
        c = heliosdb.connect(os.path.join(d, "m.db"), key=KEY, config="default", audit_user="fz")
        c.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        c.executemany("INSERT INTO t VALUES (?, ?)", sorted(rows0.items()))
        c.commit()
        c.close()
    elif kind == "wal":
        p = os.path.join(d, "w.db")
        c = heliosdb.connect(p, key=KEY, config="default", audit_user="fz")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        c.executemany("INSERT INTO t VALUES (?, ?)", sorted(rows0.items()))
        c.commit()
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s = dict(rows0)
        for n in range(1, 6):
            c.executemany("INSERT INTO t VALUES (?, ?)", [(k, payload(k)) for k in range(n * 100, n * 100 + 6)])
            for k in list(s)[:n * 3]:
                c.execute("UPDATE t SET v = ? WHERE k = ?", (payload(k + 7), k))
            for k in range(n * 100, n * 100 + 6):
                s[k] = payload(k)
            c.commit()
        # A crash-consistent snapshot of the live files (the -shm is left out: the next
        # open rebuilds the WAL index from the WAL, the recovery path under test).
        shutil.copy(p, p + ".snap")
        shutil.copy(p + "-wal", p + "-wal.snap")
        os._exit(0)
    elif kind == "journal":
        p = os.path.join(d, "j.db")
        c = heliosdb.connect(p, key=KEY, config="default", audit_user="fz")
        c.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        c.executemany("INSERT INTO t VALUES (?, ?)", sorted(rows0.items()))
        c.commit()
        c.execute("PRAGMA cache_size=4")
        c.executemany("INSERT INTO t VALUES (?, ?)", [(k, payload(k)) for k in range(1000, 1060)])
        c.execute("UPDATE t SET v = x'00' WHERE k < 20")
        assert os.path.exists(p + "-journal")
        os._exit(0)   # dies mid-transaction: the journal is hot, the file holds spilled pages
""")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pristine"))
    for kind in ("main", "wal", "journal"):
        p = run_child(MAKE, kind, d, timeout=120)
        assert p.returncode == 0, p.stderr
    os.replace(os.path.join(d, "w.db.snap"), os.path.join(d, "w.db"))
    os.replace(os.path.join(d, "w.db-wal.snap"), os.path.join(d, "w.db-wal"))
    for extra in ("w.db-shm",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    assert os.path.getsize(os.path.join(d, "w.db-wal")) > 0
    assert os.path.getsize(os.path.join(d, "j.db-journal")) > 0
    return d


SETS = {
    "main": ("m.db", ["m.db"]),
    "header": ("m.db", ["m.db"]),
    "wal": ("w.db", ["w.db", "w.db-wal"]),
    "walmain": ("w.db", ["w.db", "w.db-wal"]),
    "journal": ("j.db", ["j.db", "j.db-journal"]),
}
TARGET_FILE = {"main": "m.db", "header": "m.db", "wal": "w.db-wal", "walmain": "w.db",
               "journal": "j.db-journal"}

# ------------------------------------------------------------------ the worker ----------

WORKER = textwrap.dedent(r"""
    import json, math, os, shutil, sys, traceback
    import heliosdb
    from helpers.reliability import KEY, payload
    pristine, scratch = sys.argv[1], sys.argv[2]

    def classify(exc):
        mod = type(exc).__module__
        return {"exc": type(exc).__name__, "heliosdb": isinstance(exc, heliosdb.Error),
                "apsw": mod.startswith("apsw") or "apsw" in type(exc).__name__.lower(),
                "msg": str(exc)[:300], "code": getattr(exc, "sqlite_errorname", None)}

    def mutate(path, muts, ps):
        data = bytearray(open(path, "rb").read())
        for m in muts:
            kind = m[0]
            if kind == "flip":
                if data:
                    off = m[1] % len(data); data[off] ^= 1 << (m[2] % 8)
            elif kind == "set":
                if data:
                    data[m[1] % len(data)] = m[2] & 0xFF
            elif kind == "rand":
                if data:
                    off = m[1] % len(data); blob = bytes.fromhex(m[2]); data[off:off + len(blob)] = blob
            elif kind == "zero":
                if data:
                    off = m[1] % len(data); data[off:off + m[2]] = bytes(len(data[off:off + m[2]]))
            elif kind == "trunc":
                del data[m[1] % (len(data) + 1):]
            elif kind == "extend":
                data += bytes.fromhex(m[1])
            elif kind in ("swap", "dup"):
                base = 4096 if path.endswith(".db") else 0
                n = (len(data) - base) // ps
                if n >= 2:
                    a, b = base + (m[1] % n) * ps, base + (m[2] % n) * ps
                    pa, pb = bytes(data[a:a + ps]), bytes(data[b:b + ps])
                    data[b:b + ps] = pa
                    if kind == "swap":
                        data[a:a + ps] = pb
        with open(path, "wb") as f:
            f.write(data)

    def corrupt(req):
        s = req["set"]
        for name in os.listdir(scratch):
            os.remove(os.path.join(scratch, name))
        for name in req["files"]:
            shutil.copy(os.path.join(pristine, name), os.path.join(scratch, name))
        main = os.path.join(pristine, req["db"])
        ps = int.from_bytes(open(main, "rb").read(52)[48:52], "big")
        mutate(os.path.join(scratch, req["target"]), req["muts"], ps)
        out = {"stage": "connect"}
        try:
            c = heliosdb.connect(os.path.join(scratch, req["db"]), key=KEY, config="default",
                                 audit_user="fuzz")
            try:
                out["stage"] = "select"
                rows = {k: bytes(v).hex() for k, v in c.execute("SELECT k, v FROM t")}
                out["rows"] = rows
                out["stage"] = "integrity"
                out["integrity"] = [r[0] for r in c.execute("PRAGMA integrity_check")][:3]
                out["stage"] = "verify"
                rep = c.audit.verify()
                out["verify"] = bool(rep.ok)
            finally:
                c.close()
            out["stage"] = "done"
        except BaseException as e:
            out.update(classify(e))
        # No key registration may outlive the connection, failed opens included.
        from heliosdb.crypto import vfs as _vfs
        full = _vfs.full_pathname(os.path.join(scratch, req["db"]))
        out["leak"] = _vfs.key_info(full) is not None
        if out["leak"]:
            import gc
            gc.collect()   # one leak must not cascade into the next inputs
        return out

    def make_value(d):
        t = d["t"]
        if t == "bytes": return bytes.fromhex(d["v"])
        if t == "bytearray": return bytearray.fromhex(d["v"])
        if t == "memoryview": return memoryview(bytes.fromhex(d["v"]))
        if t == "mvstrided": return memoryview(bytes.fromhex(d["v"]))[::2]
        if t == "str": return d["v"]
        if t == "int": return int(d["v"])
        if t == "float": return float(d["v"])
        if t == "none": return None
        if t == "list": return [make_value(x) for x in d["v"]]
        if t == "tuple": return tuple(make_value(x) for x in d["v"])
        if t == "dict": return {k: make_value(x) for k, x in d["v"].items()}
        if t == "bool": return bool(d["v"])
        if t == "obj": return object()
        if t == "key": return heliosdb.Key(bytes.fromhex(d["v"]))
        if t == "closedkey":
            k = heliosdb.Key(bytes.fromhex(d["v"])); k.close(); return k
        raise ValueError(t)

    def keytest(req):
        path = os.path.join(scratch, "k.db")
        for name in os.listdir(scratch):
            os.remove(os.path.join(scratch, name))
        if req["existing"]:
            shutil.copy(os.path.join(pristine, "m.db"), path)
        out = {}
        try:
            key = make_value(req["key"])
            c = heliosdb.connect(path, key=key, config={"extends": "default", "encryption": {"kdf_profile": "test"}})
            try:
                out["rows"] = len(c.execute("SELECT * FROM sqlite_master").fetchall())
                out["encrypted"] = c.storage_info().get("encryption_enabled")
            finally:
                c.close()
            out["ok"] = True
        except BaseException as e:
            out.update(classify(e))
        return out

    SQLCONN = {}
    def sqltest(req):
        import sqlite3
        if "h" not in SQLCONN:
            p = os.path.join(scratch, "sql.db")
            if os.path.exists(p):
                os.remove(p)
            h = heliosdb.connect(p, key=KEY, config="verbose", audit_user="sqlfuzz")
            s = sqlite3.connect(":memory:")
            for c in (h, s):
                c.execute("CREATE TABLE t(a, b TEXT, c BLOB, d REAL, e INTEGER PRIMARY KEY)")
                c.executemany("INSERT INTO t(a, b, c, d) VALUES (?, ?, ?, ?)",
                              [(i, "s%d" % i, bytes([i]) * i, i / 3) for i in range(8)])
                c.commit()
            SQLCONN["h"], SQLCONN["s"] = h, s
        h, s = SQLCONN["h"], SQLCONN["s"]
        res = {}
        for name, c, mod in (("h", h, heliosdb), ("s", s, sqlite3)):
            try:
                params = make_value(req["params"])
                cur = c.execute(req["sql"], params)
                rows = cur.fetchall()
                res[name] = {"rows": repr(rows)[:2000]}
            except BaseException as e:
                d = classify(e)
                d["foreign"] = not isinstance(e, mod.Error)
                res[name] = d
            try:
                c.rollback()
            except BaseException as e:
                res[name + "_rollback"] = classify(e)
        try:
            rep = h.audit.verify()
            res["verify"] = bool(rep.ok)
        except BaseException as e:
            res["verify_exc"] = classify(e)
        return res

    def cfgtest(req):
        out = {}
        try:
            if req["kind"] == "path":
                p = os.path.join(scratch, "c.toml")
                with open(p, "wb") as f:
                    f.write(bytes.fromhex(req["data"]))
                heliosdb.load_config(p)
            else:
                heliosdb.load_config(json.loads(req["data"]))
            out["ok"] = True
        except BaseException as e:
            out.update(classify(e))
        return out

    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = {"corrupt": corrupt, "key": keytest, "sql": sqltest, "cfg": cfgtest}[req["op"]](req)
        except BaseException:
            out = {"worker_error": traceback.format_exc()[-2000:]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
""")


class Worker:
    """A long-lived subprocess answering one JSON request per line, with a timeout."""

    def __init__(self, pristine_dir, scratch_dir, timeout=60.0):
        self.args = [sys.executable, "-c", WORKER, pristine_dir, scratch_dir]
        self.timeout = timeout
        self.proc = None
        self.requests = 0

    def start(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=child_env())

    def call(self, req):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.requests += 1
        INPUTS[req["op"]] = INPUTS.get(req["op"], 0) + 1
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ready, _w, _x = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise AssertionError(f"hang (no answer in {self.timeout}s) on {req}")
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            err = self.proc.stderr.read()[-2000:]
            self.proc = None
            raise AssertionError(f"worker died (rc={rc}) on {req}: {err}")
        out = json.loads(line)
        assert "worker_error" not in out, out["worker_error"]
        return out

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def worker(pristine, tmp_path_factory):
    w = Worker(pristine, str(tmp_path_factory.mktemp("scratch")))
    yield w
    w.close()


# ------------------------------------------------------------------ corruption ----------

STATES = {"wal": [{k: v.hex() for k, v in s.items()} for s in wal_states()]}
STATS: dict = {}
INPUTS: dict = {}
LEAKS: list = []
MESSAGES: dict = {}


def summary(out):
    """The worker's answer without the row values (for assertion messages)."""
    short = {k: v for k, v in out.items() if k != "rows"}
    if "rows" in out:
        short["rows"] = f"{len(out['rows'])} rows, keys {sorted(int(k) for k in out['rows'])[:8]}..."
    return short


JOURNAL_TX = {**{k: b"\x00".hex() for k in range(1, 20)},
              **{k: payload(k).hex() for k in range(1000, 1060)}}


def judge(target, muts, out):
    """Assert the rules; return the outcome class for the figures."""
    where = f"target={target} muts={muts} -> {summary(out)}"
    LEAKS.append(out.get("leak"))
    assert not out.get("leak"), "a failed open left the key registered: " + where
    if "exc" in out:
        assert out["heliosdb"] and not out["apsw"], "non-heliosdb exception: " + where
        MESSAGES.setdefault(out["exc"], set()).add(out["msg"][:90])
        return f"error:{out['exc']}"
    keyed = {int(k): v for k, v in out["rows"].items()}
    exact = {k: v.hex() for k, v in ROWS0.items()}
    valid = STATES["wal"] if target in ("wal", "walmain") else [exact]
    if keyed in valid:
        assert out.get("integrity") == ["ok"], \
            "data returned as valid while integrity_check fails: " + where
        assert out.get("verify") is True, "rows intact but the audit chain fails: " + where
        return "intact" if keyed == valid[-1] else f"earlier-commit:{valid.index(keyed)}"
    if target == "journal":
        # SQLite's own semantics: a hot journal that is gone, empty or has a damaged header
        # (journal headers are in clear and carry no tag) is not played back, and the pages
        # the dead writer spilled stay. Every value must still be one that was written:
        # either committed, or written by that transaction; never anything else.
        for k, v in keyed.items():
            assert v == exact.get(k) or v == JOURNAL_TX.get(k), \
                f"row {k}: a value nobody wrote: " + where
        return "journal-ignored:uncommitted-pages-kept"
    raise AssertionError("wrong data returned as valid: " + where)


def record(target, outcome):
    STATS.setdefault(target, {}).setdefault(outcome, 0)
    STATS[target][outcome] += 1


def random_muts(rng, target, size):
    lo, hi = 0, size
    if target == "header":
        hi = 4096
    elif target == "main":
        lo = 4096
    muts = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        r = rng.random()
        off = rng.randrange(lo, max(lo + 1, hi))
        if r < 0.35:
            muts.append(["flip", off, rng.randrange(8)])
        elif r < 0.5:
            muts.append(["set", off, rng.randrange(256)])
        elif r < 0.65:
            muts.append(["rand", off, os.urandom(rng.randrange(1, 64)).hex()])
        elif r < 0.75:
            muts.append(["zero", off, rng.choice([1, 28, 512, 1024, 1048])])
        elif r < 0.85 and target != "header":
            muts.append(["trunc", rng.randrange(lo, size)])
        elif r < 0.9:
            muts.append(["extend", os.urandom(rng.choice([1, 24, 1024, 1048])).hex()])
        else:
            muts.append([rng.choice(["swap", "dup"]), rng.randrange(64), rng.randrange(64)])
    return muts


def fuzz_corruption(worker, pristine, target, n, seed):
    db, files = SETS[target]
    size = os.path.getsize(os.path.join(pristine, TARGET_FILE[target]))
    rng = random.Random(seed)
    for _ in range(n):
        muts = random_muts(rng, target, size)
        out = worker.call({"op": "corrupt", "set": target, "db": db, "files": files,
                           "target": TARGET_FILE[target], "muts": muts})
        record(target, judge(target, muts, out))


TARGETS = ["main", "header", "wal", "walmain", "journal"]


@pytest.mark.parametrize("target", TARGETS)
def test_random_corruption(worker, pristine, target):
    fuzz_corruption(worker, pristine, target, n=80, seed=9)
    assert any(k != "intact" for k in STATS[target]), STATS[target]
    print(f"\n[fuzz {target}] {STATS[target]}")


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_random_corruption_long(worker, pristine, target):
    fuzz_corruption(worker, pristine, target, n=2000, seed=2026)
    print(f"\n[fuzz-long {target}] {STATS[target]}")


def test_unmodified_files_read_back_exactly(worker, pristine):
    """Control: with no mutation, every target reads back exactly what was written."""
    for target in TARGETS:
        db, files = SETS[target]
        out = worker.call({"op": "corrupt", "set": target, "db": db, "files": files,
                           "target": TARGET_FILE[target], "muts": []})
        assert judge(target, [], out) == "intact", (target, out)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("rand"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=40).map(bytes.hex)),
    st.tuples(st.just("zero"), st.integers(0, 1 << 20), st.sampled_from([1, 4, 28, 512, 1024])),
    st.tuples(st.just("trunc"), st.integers(0, 1 << 20)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=1100).map(bytes.hex)),
    st.tuples(st.sampled_from(["swap", "dup"]), st.integers(0, 63), st.integers(0, 63)),
)


@settings(max_examples=60, **HSET)
@given(target=st.sampled_from(TARGETS), muts=st.lists(mutation, min_size=1, max_size=3))
def test_hypothesis_corruption(worker, pristine, target, muts):
    muts = [list(m) for m in muts]
    if target == "header":
        muts = [[m[0], m[1] % 4096, *m[2:]] if m[0] in ("flip", "set", "rand", "zero") else m
                for m in muts if m[0] != "trunc"] or [["flip", 100, 0]]
    db, files = SETS[target]
    out = worker.call({"op": "corrupt", "set": target, "db": db, "files": files,
                       "target": TARGET_FILE[target], "muts": muts})
    record("hyp-" + target, judge(target, muts, out))


# ------------------------------------------------------------------ keys ---------------

def keydesc():
    byts = st.binary(max_size=80).filter(lambda b: len(b) != 32)
    return st.one_of(
        byts.map(lambda b: {"t": "bytes", "v": b.hex()}),
        byts.map(lambda b: {"t": "bytearray", "v": b.hex()}),
        byts.map(lambda b: {"t": "memoryview", "v": b.hex()}),
        st.binary(min_size=66, max_size=66).map(lambda b: {"t": "mvstrided", "v": b.hex()}),
        st.just({"t": "str", "v": ""}),
        st.integers(-2**70, 2**70).map(lambda i: {"t": "int", "v": str(i)}),
        st.floats(allow_nan=True).map(lambda f: {"t": "float", "v": repr(f)}),
        st.lists(st.integers(0, 255), max_size=40).map(
            lambda xs: {"t": "list", "v": [{"t": "int", "v": str(x)} for x in xs]}),
        st.just({"t": "dict", "v": {}}),
        st.just({"t": "bool", "v": True}),
        st.just({"t": "obj"}),
    )


def judge_key(desc, out):
    where = f"key={desc} -> {out}"
    assert "ok" not in out, "a malformed key was accepted: " + where
    assert not out["apsw"], where
    assert out["heliosdb"], "not a heliosdb error: " + where
    return out["exc"]


@settings(max_examples=40, **HSET)
@given(desc=keydesc(), existing=st.booleans())
def test_hypothesis_bad_keys_only_clean_errors(worker, desc, existing):
    out = worker.call({"op": "key", "key": desc, "existing": existing})
    judge_key(desc, out)


@pytest.mark.parametrize("bad", [b"short", b"", bytes(33), bytearray(31), ""],
                         ids=["5-bytes", "0-bytes", "33-bytes", "31-bytearray", "empty-passphrase"])
def test_wrong_length_key_is_a_heliosdb_error(tmp_path, bad):
    """Found: a raw key of the wrong length or an empty passphrase raised a bare
    ValueError (now ProgrammingError, a heliosdb.Error)."""
    with pytest.raises(heliosdb.Error):
        heliosdb.connect(str(tmp_path / "k.db"), key=bad)


def test_closed_key_is_a_heliosdb_error(worker):
    """Found: a closed (wiped) heliosdb.Key raised a bare ValueError from deep inside
    the open path."""
    out = worker.call({"op": "key", "key": {"t": "closedkey", "v": bytes(32).hex()},
                       "existing": True})
    judge_key({"t": "closedkey"}, out)


def test_right_key_wrong_file_and_wrong_key(worker):
    out = worker.call({"op": "key", "key": {"t": "key", "v": bytes(32).hex()}, "existing": True})
    assert out.get("exc") == "WrongKeyError" and out["heliosdb"], out
    out = worker.call({"op": "key", "key": {"t": "bytes", "v": KEY.hex()}, "existing": True})
    assert out.get("ok") and out["encrypted"], out


# ------------------------------------------------------------------ configs -------------

VALID_TOML = open(os.path.join(os.path.dirname(heliosdb.__file__), "configs",
                               "default.toml"), "rb").read()


@settings(max_examples=150, **HSET)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.tuples(st.integers(0, len(VALID_TOML)), st.binary(min_size=0, max_size=12),
              st.integers(0, 20)).map(
        lambda t: VALID_TOML[:t[0]] + t[1] + VALID_TOML[t[0] + t[2]:]),
    st.lists(st.tuples(st.sampled_from(["audit", "encryption", "database", "audit.capture_metadata",
                                        "bogus", "audit.x"]),
                       st.sampled_from(["enabled", "log_dml", "retention_days", "async_buffer_size",
                                        "max_query_length", "key_source", "kdf_profile", "page_size",
                                        "enable_wal", "algorithm", "extends", "name", "zzz"]),
                       st.sampled_from(["true", "0", "-1", "1e400", "\"x\"", "[]", "{}", "{ file = 3 }",
                                        "99999999999999999999", "nan", "\"\\ud800\"", "1979-05-27",
                                        "\"default\"", "\"../../etc/passwd\"", "[1, \"a\"]"])),
             max_size=8).map(lambda kvs: "\n".join(f"[{s}]\n{k} = {v}" for s, k, v in kvs).encode()),
))
def test_hypothesis_malformed_toml(worker, data):
    out = worker.call({"op": "cfg", "kind": "path", "data": data.hex()})
    if "ok" not in out:
        assert out["exc"] == "ConfigError" and out["heliosdb"], (data, out)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64),
                        st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.one_of(json_scalar, st.lists(json_scalar, max_size=4),
                       st.dictionaries(st.text(max_size=8), json_scalar, max_size=4))


@settings(max_examples=150, **HSET)
@given(cfg=st.dictionaries(
    st.sampled_from(["audit", "encryption", "database", "name", "extends", "description", "junk"]),
    st.one_of(json_value, st.dictionaries(
        st.sampled_from(["enabled", "log_dml", "log_select", "retention_days", "async_buffer_size",
                         "max_query_length", "key_source", "kdf_profile", "page_size", "enable_wal",
                         "capture_metadata", "table", "enable_checksums", "nonce_warning_fraction",
                         "x"]), json_value, max_size=5)), max_size=4))
def test_hypothesis_malformed_config_dicts(worker, cfg):
    out = worker.call({"op": "cfg", "kind": "dict", "data": json.dumps(cfg)})
    if "ok" not in out:
        assert out["exc"] == "ConfigError" and out["heliosdb"], (cfg, out)


# ------------------------------------------------------------------ odd SQL -------------

SQL_PIECES = ["SELECT", "INSERT INTO t(a) VALUES", "UPDATE t SET a =", "DELETE FROM t WHERE",
              "(", ")", "?", ":x", "?1", "@y", "$z", ",", "'", "''", "\"", "--", "/*", "*/", ";",
              "NULL", "1", "-9223372036854775808", "9223372036854775807", "1e999", "x'00ff'",
              "zeroblob(10)", "a", "b", "c", "t", "FROM", "WHERE", "ORDER BY", "LIMIT", "*",
              "||", "CAST(", "AS TEXT", "json('[1,2]')", "printf('%d', 5)", "abs(", "length(",
              "char(0)", "'\u00e9\u4e2d\U0001f600'", "sqlite_master", "__audit_log", "PRAGMA",
              "user_version", "=", "<", "UNION ALL", "WITH r(i) AS (SELECT 1)", "hex(", "e"]


def param_desc():
    scalar = st.one_of(
        st.none().map(lambda _: {"t": "none"}),
        st.integers(-2**70, 2**70).map(lambda i: {"t": "int", "v": str(i)}),
        st.floats().map(lambda f: {"t": "float", "v": repr(f)}),
        st.text(max_size=30).map(lambda s: {"t": "str", "v": s}),
        st.binary(max_size=30).map(lambda b: {"t": "bytes", "v": b.hex()}),
        st.binary(max_size=30).map(lambda b: {"t": "memoryview", "v": b.hex()}),
        st.just({"t": "obj"}),
        st.just({"t": "list", "v": []}),
    )
    return st.one_of(
        st.lists(scalar, max_size=4).map(lambda xs: {"t": "tuple", "v": xs}),
        st.dictionaries(st.sampled_from(["x", "y", "z", "1", ""]), scalar, max_size=3).map(
            lambda d: {"t": "dict", "v": d}),
        scalar,
    )


STD_BUILTIN_OK = {"OverflowError", "UnicodeEncodeError", "TypeError", "ValueError"}


@settings(max_examples=150, **HSET)
@given(pieces=st.lists(st.sampled_from(SQL_PIECES), min_size=1, max_size=9),
       params=param_desc())
def test_hypothesis_odd_sql_and_parameters(worker, pieces, params):
    sql = " ".join(pieces)
    out = worker.call({"op": "sql", "sql": sql, "params": params})
    h, s = out["h"], out["s"]
    where = f"sql={sql!r} params={params} -> {out}"
    assert out.get("verify") is True, "the audit chain broke: " + where
    assert "h_rollback" not in out, where
    if "exc" in h:
        assert not h["apsw"], "an apsw exception escaped: " + where
        if h["foreign"]:
            # A builtin exception is fine only where sqlite3 raises the same one.
            assert h["exc"] in STD_BUILTIN_OK and s.get("exc") == h["exc"], where
    elif "rows" in s and "__audit_log" not in sql and "sqlite_master" not in sql:
        assert h["rows"] == s["rows"], "heliosdb returned other data than sqlite3: " + where


@pytest.mark.slow
def test_odd_sql_seeded_long(worker):
    rng = random.Random(77)
    n = 0
    for _ in range(3000):
        sql = " ".join(rng.choice(SQL_PIECES) for _ in range(rng.randint(1, 10)))
        params = {"t": "tuple", "v": [rng.choice([{"t": "int", "v": str(rng.randint(-2**65, 2**65))},
                                                  {"t": "str", "v": "\ud800" if rng.random() < .1 else "x"},
                                                  {"t": "none"}, {"t": "bytes", "v": "00ff"},
                                                  {"t": "float", "v": "nan"}])
                                      for _ in range(rng.randint(0, 3))]}
        out = worker.call({"op": "sql", "sql": sql, "params": params})
        assert out.get("verify") is True, out
        h = out["h"]
        if "exc" in h:
            assert not h["apsw"], (sql, out)
            if h["foreign"]:
                assert h["exc"] in STD_BUILTIN_OK and out["s"].get("exc") == h["exc"], (sql, out)
        n += 1
    print(f"\n[fuzz-long sql] inputs={n}")


def test_fuzz_figures():
    """Prints the outcome counts of the corruption fuzzers (for RELIABILITY.md)."""
    print("\n[fuzz figures] " + json.dumps(STATS, sort_keys=True))
    print(f"[fuzz figures] inputs by kind={json.dumps(INPUTS, sort_keys=True)} "
          f"(corrupt = damaged files, key = bad keys, cfg = configs, sql = statements)")
    print(f"[fuzz figures] corrupted-file inputs={len(LEAKS)} key registrations leaked by failed "
          f"opens={sum(1 for x in LEAKS if x)}")
    for exc, msgs in sorted(MESSAGES.items()):
        print(f"[fuzz messages] {exc}: {sorted(msgs)[:12]}")
