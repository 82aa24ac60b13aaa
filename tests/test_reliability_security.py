"""Security checks under load (issue 9, part 5).

* No plaintext anywhere: a full workload (rollback journal and WAL, statement journals,
  temp tables, sorter spills with ``temp_store=FILE``, VACUUM, the audit log with row
  values) runs in a subprocess whose ``TMPDIR`` and ``SQLITE_TMPDIR`` point at a private
  folder. The child scans its own open files (temp files are unlinked at once, so only
  ``/proc/self/fd`` shows them) while they are live; the test then scans every file left
  in the database folder and the private temp folder. No marker string may appear.
* Nonce uniqueness: the nonce of every page write is read back out of the files (WAL
  frames as they are appended, main-file pages after each checkpoint or commit; format
  in docs/FORMAT.md), ~20k writes in the fast run, 1M in the slow one. No nonce may repeat,
  and a page whose ciphertext changed must have a new nonce.
* Keys never show: reprs, ``str`` and ``repr`` of every error the key paths raise (with
  their chained causes and formatted tracebacks), everything logged at DEBUG, the audit
  log and the file itself hold no form of the key or passphrase.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import random
import traceback

import numpy as np
import pytest

import heliosdb
from heliosdb import native

from helpers.files import files_under, hits
from helpers.reliability import HDR, died_of_signal, main_pages, nonce_of, run_child, wal_frames

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

MARK = "HXR-secret"

WORKLOAD = r"""
import json, os, sys
import heliosdb
from helpers.reliability import KEY
d, enc = sys.argv[1], sys.argv[2] == "1"
MARK = b"HXR-secret"
seen_temp = set()
hits = []

def scan_fds(tag):
    for fd in os.listdir("/proc/self/fd"):
        p = "/proc/self/fd/" + fd
        try:
            target = os.readlink(p)
            if not target.startswith("/") or target.startswith(("/dev", "/proc")) or not os.path.isfile(p):
                continue
            if "site-packages" in target or target.endswith((".py", ".so", ".pyc")):
                continue
            data = open(p, "rb").read()
        except OSError:
            continue
        if "(deleted)" in target or target.startswith(os.environ["TMPDIR"]):
            seen_temp.add(target)
        if MARK in data or b"hxr_patients" in data:
            hits.append((tag, target))

for mode in ("delete", "wal"):
    path = os.path.join(d, "sec-%s.db" % mode)
    c = heliosdb.connect(path, key=KEY if enc else None, config="verbose", audit_user="hxr_auditor")
    c.execute("PRAGMA journal_mode=" + mode)
    c.execute("PRAGMA temp_store=FILE")
    c.execute("PRAGMA cache_size=10")
    c.execute("PRAGMA temp.cache_size=10")
    c.execute("CREATE TABLE hxr_patients(id INTEGER PRIMARY KEY, hxr_ssn TEXT UNIQUE, note TEXT)")
    c.executemany("INSERT INTO hxr_patients(hxr_ssn, note) VALUES (?, ?)",
                  [("%s-ssn-%05d" % (MARK.decode(), i), ("%s-note-%d " % (MARK.decode(), i)) * 20)
                   for i in range(3000)])
    c.commit()
    scan_fds(mode + ":insert")
    # Statement journal: a multi-row UPDATE that fails half-way on the UNIQUE constraint.
    try:
        c.execute("UPDATE hxr_patients SET hxr_ssn = 'HXR-secret-dup' WHERE id > 10")
    except heliosdb.IntegrityError:
        pass
    c.execute("UPDATE hxr_patients SET note = note || 'HXR-secret-upd' WHERE id % 3 = 0")
    scan_fds(mode + ":update-open")
    c.commit()
    c.execute("CREATE TEMP TABLE hxr_tmp AS SELECT * FROM hxr_patients")
    cur = c.execute("SELECT note, hxr_ssn FROM hxr_tmp ORDER BY note DESC, random()")
    cur.fetchmany(5)
    scan_fds(mode + ":sorter")
    cur.fetchall()
    c.execute("CREATE INDEX hxr_idx ON hxr_patients(note)")
    c.execute("SELECT DISTINCT substr(note, 1, 30) FROM hxr_patients GROUP BY note").fetchall()
    c.commit()
    if mode == "delete":
        c.execute("VACUUM")
    c.execute("DELETE FROM hxr_patients WHERE id % 2 = 0")
    scan_fds(mode + ":delete-open")
    c.commit()
    c.audit.log("DATA_SUBJECT_REQUEST", target="HXR-secret-subject", details={"why": "HXR-secret-reason"})
    scan_fds(mode + ":end")
    if mode == "wal":
        c2 = heliosdb.connect(path, key=KEY if enc else None, config="verbose", audit_user="hxr_auditor")
        c2.execute("SELECT count(*) FROM hxr_patients").fetchall()
        scan_fds(mode + ":wal-live")
        c2.close()
    c.close()
print(json.dumps({"hits": hits, "temp_files_seen": sorted(seen_temp)}))
"""


def _run_workload(tmp_path, encrypted: bool):
    """Run WORKLOAD in a child, its database in tmp_path/db and its temp files in
    tmp_path/tmp; (the JSON report it prints last, the db dir, the tmp dir)."""
    db_dir, tmp_dir = tmp_path / "db", tmp_path / "tmp"
    db_dir.mkdir()
    tmp_dir.mkdir()
    env = {"TMPDIR": str(tmp_dir), "SQLITE_TMPDIR": str(tmp_dir)}
    p = run_child(WORKLOAD, str(db_dir), "1" if encrypted else "0", env=env, timeout=300)
    assert not died_of_signal(p), p.stderr
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), db_dir, tmp_dir


def test_no_plaintext_in_any_file_a_workload_creates(tmp_path):
    out, db_dir, tmp_dir = _run_workload(tmp_path, encrypted=True)
    assert out["temp_files_seen"], "no temp file was ever open: the scan proves nothing"
    assert out["hits"] == [], out["hits"]
    files = files_under(db_dir, tmp_dir)
    assert any(f.endswith("-wal") or f.endswith(".db") for f in files)
    markers = [MARK.encode(), b"hxr_patients", b"hxr_ssn", b"hxr_auditor", b"hxr_tmp",
               b"SQLite format 3", b"INSERT INTO", b"DATA_SUBJECT_REQUEST"]
    found = hits(files, markers)
    assert found == [], found
    print(f"\n[plaintext] files scanned={len(files)} live temp files scanned="
          f"{len(out['temp_files_seen'])} markers={len(markers)} hits=0")


def test_plaintext_scanner_control(tmp_path):
    """The same workload without a key leaves the markers everywhere: the scan works."""
    out, db_dir, _tmp_dir = _run_workload(tmp_path, encrypted=False)
    assert out["hits"], "the live scan found nothing in a plaintext workload"
    assert hits(files_under(db_dir), [MARK.encode()])


# ------------------------------------------------------------------ nonces --------------

class NonceHarvest:
    def __init__(self, path):
        self.path = path
        self.buf = bytearray()
        self.main_last: dict = {}     # pgno -> (nonce, ciphertext digest)
        self.wal_off = 0
        self.reuse_same_page = 0
        self.writes = 0

    def add(self, nonce):
        self.buf += nonce
        self.writes += 1

    def harvest_wal(self, page_size):
        last = self.wal_off
        for off, _pgno, page in wal_frames(self.path + "-wal", page_size, self.wal_off):
            self.add(nonce_of(page))
            last = off + 24 + page_size
        self.wal_off = last

    def wal_reset(self):
        self.wal_off = 0

    def harvest_main(self):
        for pgno, page in main_pages(self.path):
            nonce, body = nonce_of(page), hash(page)
            prev = self.main_last.get(pgno)
            if prev is None or prev[1] != body:
                if prev is not None and prev[0] == nonce:
                    self.reuse_same_page += 1     # new ciphertext under the old nonce
                self.main_last[pgno] = (nonce, body)
                self.add(nonce)

    def duplicates(self):
        arr = np.frombuffer(bytes(self.buf), dtype=np.dtype([("a", ">u8"), ("b", ">u4")]))
        return len(arr) - len(np.unique(arr))


def nonce_run(tmp_path, target_writes, seed=1):
    path = str(tmp_path / "nonce.db")
    cfg = {"extends": "default", "database": {"page_size": 512}}
    conn = heliosdb.connect(path, key=os.urandom(32), config=cfg, audit_user="nonce")
    ps = conn.execute("PRAGMA page_size").fetchone()[0]
    assert ps == 512
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, randomblob(150))", [(k,) for k in range(3000)])
    conn.commit()
    h = NonceHarvest(path)
    h.harvest_wal(ps)
    rng = random.Random(seed)
    step = 0
    mode = "wal"
    while h.writes < target_writes:
        step += 1
        if mode == "wal" and h.writes > target_writes * 0.8:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            h.harvest_wal(ps)
            h.wal_reset()
            h.harvest_main()
            conn.execute("PRAGMA journal_mode=DELETE")
            mode = "delete"
        m = rng.randrange(2, 9)
        conn.execute("UPDATE t SET v = randomblob(150) WHERE k % ? = ?", (m, step % m))
        conn.commit()
        if mode == "wal":
            h.harvest_wal(ps)
            if step % 10 == 0:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                h.wal_reset()
                h.harvest_main()
        else:
            h.harvest_main()
    counted = conn.storage_info()["encryptions_under_current_key"]
    conn.close()
    dups = h.duplicates()
    assert h.reuse_same_page == 0, "a page was re-encrypted under its old nonce"
    assert dups == 0, f"{dups} repeated nonces among {h.writes} page writes"
    # Every write read back was counted by the shim (the count also covers the
    # frames overwritten before they could be read, so it is an upper bound).
    assert h.writes <= counted + 10, (h.writes, counted)
    print(f"\n[nonces] page writes read back={h.writes} shim count={counted} repeats=0")
    return h.writes


def test_nonce_uniqueness_fast(tmp_path):
    assert nonce_run(tmp_path, 20_000) >= 20_000


@pytest.mark.slow
def test_nonce_uniqueness_million(tmp_path):
    assert nonce_run(tmp_path, 1_000_000, seed=2) >= 1_000_000


def test_harvest_detects_a_repeated_nonce(tmp_path):
    """The check is not vacuous: a page written back with its old nonce is caught."""
    path = str(tmp_path / "r.db")
    conn = heliosdb.connect(path, key=bytes(range(32)), config="default")
    conn.execute("CREATE TABLE t(v)")
    conn.execute("INSERT INTO t VALUES (randomblob(3000))")
    conn.commit()
    conn.close()
    h = NonceHarvest(path)
    h.harvest_main()
    data = bytearray(open(path, "rb").read())
    ps = 4096
    data[HDR + ps + 10] ^= 0xFF     # same nonce, other ciphertext on page 2
    open(path, "wb").write(data)
    h.harvest_main()
    assert h.reuse_same_page == 1 and h.duplicates() == 1


# ------------------------------------------------------------------ keys in the open -----

SECRET_RAW = bytes.fromhex("a1" * 8 + "5eed" * 12)
PASSPHRASE = "HXR-pass correct horse battery staple"


def secret_forms():
    forms = [SECRET_RAW, SECRET_RAW.hex().encode(), SECRET_RAW.hex().upper().encode(),
             base64.b64encode(SECRET_RAW), PASSPHRASE.encode(), PASSPHRASE.encode("utf-16-le"),
             repr(SECRET_RAW).encode()[2:-1], str(list(SECRET_RAW[:8]))[1:-1].encode()]
    return forms


def exc_texts(exc):
    out = []
    for line in traceback.format_exception(type(exc), exc, exc.__traceback__):
        out.append(line)
    e = exc
    while e is not None:
        out.extend([str(e), repr(e), repr(getattr(e, "args", ()))])
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def test_keys_absent_from_reprs_errors_and_logs(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.DEBUG)
    texts: list = []
    cfg = {"extends": "verbose", "encryption": {"kdf_profile": "test"}}
    raw_path, pw_path, plain_path = (str(tmp_path / n) for n in ("raw.db", "pw.db", "plain.db"))
    monkeypatch.setenv("HXR_KEY_HEX", SECRET_RAW.hex())

    def attempt(fn):
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - every error is inspected
            texts.append(exc_texts(e))
            return e
        texts.append(repr(r))
        return r

    c1 = heliosdb.connect(raw_path, key=SECRET_RAW, config=cfg, audit_user="alice")
    c1.execute("CREATE TABLE t(x)")
    c1.execute("INSERT INTO t VALUES ('v')")
    c1.commit()
    c2 = heliosdb.connect(pw_path, key=PASSPHRASE, config=cfg, audit_user="bob")
    c2.execute("CREATE TABLE t(x)")
    c2.commit()
    k_env = heliosdb.Key.from_env("HXR_KEY_HEX")
    k_pw = heliosdb.Key.passphrase(PASSPHRASE, "test")
    for obj in (c1, c2, c1.audit, c2.audit, c1.config, k_env, k_pw, c1.cursor()):
        texts += [repr(obj), str(obj)]
    texts += [repr(vars(c1)), json.dumps(c1.storage_info(), default=repr),
              json.dumps(c2.storage_info(), default=repr)]
    # Every error path a key goes through.
    plain = heliosdb.connect(plain_path)
    plain.execute("CREATE TABLE t(x)")
    plain.commit()
    plain.close()
    errors = [
        attempt(lambda: heliosdb.connect(pw_path, key=PASSPHRASE + "x", config=cfg)),
        attempt(lambda: heliosdb.connect(raw_path, key=bytes(32), config=cfg)),
        attempt(lambda: heliosdb.connect(raw_path, config=cfg)),
        attempt(lambda: heliosdb.connect(plain_path, key=SECRET_RAW, config=cfg)),
        attempt(lambda: heliosdb.connect(raw_path, key=SECRET_RAW[:31], config=cfg)),
        attempt(lambda: heliosdb.connect(raw_path, key=SECRET_RAW + b"\x00", config=cfg)),
        attempt(lambda: heliosdb.connect(raw_path, key=list(SECRET_RAW), config=cfg)),
        attempt(lambda: heliosdb.Key.from_hex(SECRET_RAW.hex()[:-1] + "g")),
        attempt(lambda: heliosdb.Key(SECRET_RAW + b"!")),
        attempt(lambda: c1.execute("SELECT * FROM no_such_table")),
        attempt(lambda: __import__("pickle").dumps(k_env)),
    ]
    assert sum(isinstance(e, Exception) for e in errors) == len(errors), errors
    c1.close()
    c2.close()
    # A tampered page: the error names file and page, never the key.
    data = bytearray(open(raw_path, "rb").read())
    data[HDR + 4096 + 5] ^= 1
    open(raw_path, "wb").write(data)
    e = attempt(lambda: heliosdb.connect(raw_path, key=SECRET_RAW, config=cfg)
                .execute("SELECT * FROM t").fetchall())
    assert isinstance(e, heliosdb.Error), e
    texts += [r.getMessage() + " " + repr(r.args) for r in caplog.records]
    # Audit log of the passphrase database.
    c2 = heliosdb.connect(pw_path, key=PASSPHRASE, config=cfg)
    texts.append(repr(c2.execute("SELECT * FROM __audit_log").fetchall()))
    c2.close()
    blob = "\n".join(texts).encode("utf-8", "backslashreplace")
    files = b"".join(open(p, "rb").read() for p in files_under(tmp_path))
    for form in secret_forms():
        assert form not in blob, f"a form of the key shows: {form[:12]!r}..."
        assert form not in files, f"a form of the key is in a file: {form[:12]!r}..."
    print(f"\n[keys] texts checked={len(texts)} log records={len(caplog.records)} "
          f"errors raised={len(errors) + 1} key forms={len(secret_forms())} hits=0")


LOGGED = r"""
import logging, os, sys, warnings
import apsw, apsw.ext
logging.basicConfig(filename=sys.argv[2], level=logging.DEBUG,
                    format="%(levelname)s %(name)s %(message)s")
logging.captureWarnings(True)
apsw.ext.log_sqlite(level=logging.DEBUG)      # SQLite's own error log, at DEBUG
import heliosdb
raw, pw, d = bytes.fromhex(sys.argv[1]), sys.argv[3], sys.argv[4]
cfg = {"extends": "verbose", "encryption": {"kdf_profile": "test", "nonce_warning_fraction": 1e-9}}
for key, name in ((raw, "raw.db"), (pw, "pw.db")):
    p = os.path.join(d, name)
    c = heliosdb.connect(p, key=key, config=cfg, audit_user="alice")
    c.execute("CREATE TABLE t(x)")
    c.executemany("INSERT INTO t VALUES (?)", [("row %d" % i,) for i in range(300)])
    c.commit()
    try:
        c.execute("SELECT * FROM missing")
    except heliosdb.Error as e:
        logging.getLogger("app").debug("error: %r", e)
    c.close()
    for bad in (bytes(32), "wrong passphrase", None):
        try:
            heliosdb.connect(p, key=bad, config=cfg)
        except heliosdb.Error as e:
            logging.getLogger("app").exception("open failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        c = heliosdb.connect(p, key=key, config=cfg)      # nonce warning: logged
        c.close()
    data = bytearray(open(p, "rb").read())
    data[4096 + 4096 + 9] ^= 1
    open(p, "wb").write(data)
    try:
        heliosdb.connect(p, key=key, config=cfg).execute("SELECT * FROM t").fetchall()
    except heliosdb.Error as e:
        logging.getLogger("app").exception("read failed")
print("done")
"""


def test_keys_absent_from_debug_logs_including_sqlite_log(tmp_path):
    log = str(tmp_path / "debug.log")
    d = tmp_path / "d"
    d.mkdir()
    p = run_child(LOGGED, SECRET_RAW.hex(), log, PASSPHRASE, str(d), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    text = open(log, "rb").read()
    assert text.count(b"\n") >= 5, "nothing was logged: the check proves nothing"
    for form in secret_forms():
        assert form not in text, f"a form of the key is in the log: {form[:12]!r}"
        assert form not in (p.stdout + p.stderr).encode(), form[:12]
    lines = text.count(b"\n")
    print(f"\n[keys-log] log lines={lines} hits=0")
