"""Key operations (issue 12): passphrase change and key slots, key rotation (crash-safe,
WAL and rollback), encrypt/decrypt of existing files, encrypted backups, verification."""
from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import time

import apsw
import pytest

import heliosdb
from heliosdb import crypto, native
from heliosdb.crypto import Key, format as fmt, rekey, verify
from heliosdb.errors import (
    EncryptionError, KeyRequiredError, NotEncryptedError, WrongKeyError,
)

from helpers.enc import KEY, OTHER_KEY, open_enc, q
from helpers.keyops import (
    dek_of, digest, dump, header, make_db, monotonic_ending_at_total, open_any,
    rotate_and_kill,
)

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

THIRD_KEY = bytes(range(2, 34))
SLOT_REGION = (fmt.OFF_NSLOTS, fmt.SLOTS_OFFSET + fmt.MAX_SLOTS * fmt.SLOT_SIZE)  # 100..1152


def pp(text: str) -> Key:
    return Key.passphrase(text, "test")


def changed_ranges(a: bytes, b: bytes):
    assert len(a) == len(b)
    idx = [i for i in range(0, len(a)) if a[i] != b[i]] if len(a) < 65536 else None
    if idx is None:  # compare in blocks first (large files)
        idx = []
        for off in range(0, len(a), 4096):
            if a[off:off + 4096] != b[off:off + 4096]:
                idx.extend(off + i for i in range(min(4096, len(a) - off))
                           if a[off + i] != b[off + i])
    return idx


# ------------------------------------------------------------- passphrase / slots ---

def test_change_passphrase_rewrites_only_the_slot_region(tmp_path):
    p = str(tmp_path / "big.db")
    c = make_db(p, pp("old secret"), rows=4000)  # ~4.5 MB
    want = digest(c)
    c.close()
    before = open(p, "rb").read()
    assert len(before) > 4_000_000
    t0 = time.perf_counter()
    rekey.change_passphrase(p, pp("old secret"), pp("new secret"))
    after = open(p, "rb").read()
    diff = changed_ranges(before, after)
    assert diff, "nothing changed"
    assert all(SLOT_REGION[0] <= i < SLOT_REGION[1] for i in diff), (min(diff), max(diff))
    with pytest.raises(WrongKeyError):
        open_enc(p, pp("old secret"))
    c = open_enc(p, pp("new secret"))
    assert digest(c) == want
    assert q(c, "pragma integrity_check") == [("ok",)]
    c.close()
    assert time.perf_counter() - t0 >= 0  # (instant: no page is read or written)


def test_old_passphrase_stops_at_once_in_a_process_that_has_it_open(tmp_path):
    p = str(tmp_path / "a.db")
    make_db(p, pp("one"), rows=50).close()
    live = open_enc(p, pp("one"))  # the unlock cache now knows "one"
    rekey.change_passphrase(p, pp("one"), pp("two"))
    with pytest.raises(WrongKeyError):
        open_enc(p, pp("one"))
    assert q(live, "select count(*) from t") == [(50,)]  # open connections go on
    q(live, "insert into t(n) values (-1)")
    c2 = open_enc(p, pp("two"))
    assert q(c2, "select count(*) from t") == [(51,)]
    c2.close()
    live.close()


def test_change_passphrase_with_a_write_lock_held_in_this_process(tmp_path):
    """Reading and writing the header must not drop SQLite's POSIX locks (closing any
    descriptor of the file would): another process must still see the lock."""
    p = str(tmp_path / "a.db")
    c = make_db(p, pp("one"), rows=10)
    q(c, "begin immediate")
    q(c, "insert into t(n) values (1)")
    rekey.change_passphrase(p, pp("one"), pp("two"))
    crypto.storage_info(c)
    r = subprocess.run([sys.executable, "-c", f"""
from helpers.enc import open_enc
from heliosdb.crypto import Key
c = open_enc({p!r}, Key.passphrase("two", "test"))
try:
    c.execute("begin immediate"); print("GOT")
except Exception as e:
    print("BUSY", type(e).__name__)
"""], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("BUSY"), r.stdout + r.stderr
    q(c, "commit")
    c.close()


def test_add_and_remove_key_slots(tmp_path):
    p = str(tmp_path / "a.db")
    make_db(p, KEY, rows=20).close()
    kf = tmp_path / "key.bin"
    kf.write_bytes(THIRD_KEY)
    rec = rekey.new_recovery_key()
    assert len(rec) == 71 and rec.count("-") == 7
    i_file = rekey.add_key_slot(p, KEY, Key.from_file(str(kf)))
    i_pass = rekey.add_key_slot(p, KEY, "a passphrase", kdf_profile="test")
    i_rec = rekey.add_key_slot(p, Key.from_file(str(kf)), rekey.recovery_key(rec))
    assert (i_file, i_pass, i_rec) == (1, 2, 3)
    kinds = [s["kind"] for s in rekey.list_key_slots(p)]
    assert kinds == ["raw", "raw", "passphrase", "raw"]
    for k in (KEY, Key.from_file(str(kf)), pp("a passphrase"), rekey.recovery_key(rec)):
        c = open_enc(p, k)
        assert q(c, "select count(*) from t") == [(20,)]
        c.close()
    # remove by key, then by index
    assert rekey.remove_key_slot(p, rekey.recovery_key(rec), Key.from_file(str(kf))) == 1
    with pytest.raises(WrongKeyError):
        open_enc(p, THIRD_KEY)
    assert rekey.remove_key_slot(p, KEY, 3) == 3
    with pytest.raises(WrongKeyError):
        open_enc(p, rekey.recovery_key(rec))
    assert [s["kind"] for s in rekey.list_key_slots(p)] == ["raw", "empty", "passphrase"]
    with pytest.raises(EncryptionError, match="no key slot"):
        rekey.remove_key_slot(p, KEY, 1)
    assert rekey.remove_key_slot(p, KEY, 2) == 2
    assert [s["kind"] for s in rekey.list_key_slots(p)] == ["raw"]  # trailing empties trimmed
    with pytest.raises(EncryptionError, match="last key slot"):
        rekey.remove_key_slot(p, KEY, 0)
    with pytest.raises(WrongKeyError):
        rekey.add_key_slot(p, OTHER_KEY, THIRD_KEY)  # authority is checked
    # fill the table
    for i in range(7):
        rekey.add_key_slot(p, KEY, bytes([i + 50]) * 32)
    with pytest.raises(EncryptionError, match="in use"):
        rekey.add_key_slot(p, KEY, THIRD_KEY)
    with pytest.raises(EncryptionError, match="in use"):
        rekey.change_passphrase(p, KEY, THIRD_KEY)
    c = open_enc(p, bytes([56]) * 32)
    assert q(c, "pragma integrity_check") == [("ok",)]
    c.close()


def test_change_interrupted_between_the_two_writes_leaves_both_keys(tmp_path, monkeypatch):
    p = str(tmp_path / "a.db")
    make_db(p, pp("old"), rows=10).close()

    def crash(*a, **k):
        raise KeyboardInterrupt("simulated crash after the new slot was synced")

    monkeypatch.setattr(rekey, "_erase_slot", crash)
    with pytest.raises(KeyboardInterrupt):
        rekey.change_passphrase(p, pp("old"), pp("new"))
    for k in ("old", "new"):
        c = open_enc(p, pp(k))
        assert q(c, "select count(*) from t") == [(10,)]
        c.close()


def test_torn_slot_write_never_loses_the_data_key(tmp_path):
    """Whatever prefix of the new slot reached the disk, the old key still opens."""
    p = str(tmp_path / "a.db")
    make_db(p, pp("old"), rows=10).close()
    orig = open(p, "rb").read()
    h = header(p)
    dek, _ = crypto.unlock_slot(p, h, pp("old"))
    new_slot = crypto.new_slot(h, 1, pp("new"), dek).to_bytes()
    for cut in (0, 1, 16, 44, 60, 92, 127):
        raw = bytearray(orig)
        off = fmt.SLOTS_OFFSET + fmt.SLOT_SIZE
        raw[off:off + cut] = new_slot[:cut]
        raw[fmt.OFF_NSLOTS:fmt.OFF_NSLOTS + 4] = struct.pack(">I", 2)  # count written too
        t = tmp_path / f"torn{cut}.db"
        t.write_bytes(bytes(raw))
        c = open_enc(str(t), pp("old"))
        assert q(c, "select count(*) from t") == [(10,)]
        c.close()


# ----------------------------------------------------------------------- rotation ---

@pytest.mark.parametrize("method", ["pages", "backup"])
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_rotate_key_reencrypts_every_page(tmp_path, mode, method):
    p = str(tmp_path / "a.db")
    c = make_db(p, KEY, mode=mode, rows=1500)
    if mode == "wal":
        q(c, "pragma wal_autocheckpoint=0")
        q(c, "insert into u values ('in the wal', 1)")  # committed, only in the WAL
    want = digest(c)
    c.close()
    old = header(p)
    old_dek = dek_of(p, KEY)
    calls = []
    rep = rekey.rotate_key(p, KEY, OTHER_KEY, progress=lambda d, t: calls.append((d, t)),
                           method=method)
    assert monotonic_ending_at_total(calls)
    assert rep.pages == calls[-1][1] and rep.journal_mode == mode
    new = header(p)
    assert new.generation == old.generation + 1 and new.file_id != old.file_id
    assert new.key_created >= old.key_created
    assert sorted(os.listdir(tmp_path)) == ["a.db"]  # no copy, journal or WAL left
    with pytest.raises(WrongKeyError):
        open_enc(p, KEY)
    c = open_enc(p, OTHER_KEY)
    assert digest(c) == want
    assert q(c, "pragma integrity_check") == [("ok",)]
    assert q(c, "pragma journal_mode") == [(mode,)]
    info = crypto.storage_info(c)
    assert info["data_key_generation"] == old.generation + 1
    assert info["encryptions_under_current_key"] <= 2 * rep.pages + 10  # counter reset
    q(c, "insert into u values ('after', 2)")
    c.close()
    # No page is readable under the old data key (with either file id).
    for fid in (old.file_id, new.file_id):
        r = verify.verify_pages(p, old_dek, fid)
        assert not r.ok and r.pages_checked > 0
        assert len(r.bad_pages) == r.pages_checked  # every page fails
    r = verify.verify_encryption(p, OTHER_KEY)
    assert r.ok and r.pages_checked >= rep.pages


def test_rotate_keeps_or_refuses_other_slots(tmp_path):
    p = str(tmp_path / "a.db")
    make_db(p, KEY, rows=30).close()
    rekey.add_key_slot(p, KEY, pp("recovery pass"))
    rekey.add_key_slot(p, KEY, THIRD_KEY)
    before = open(p, "rb").read()
    with pytest.raises(EncryptionError, match="would be lost"):
        rekey.rotate_key(p, KEY)
    assert open(p, "rb").read() == before  # refused before writing anything
    old_dek, old_fid = dek_of(p, KEY), header(p).file_id
    rep = rekey.rotate_key(p, KEY, keep_keys=[pp("recovery pass"), THIRD_KEY])
    assert rep.kept_slots == [0, 1, 2] and rep.dropped_slots == []
    # The same key opens the file, but no page is under the old data key any more.
    r = verify.verify_pages(p, old_dek, old_fid)
    assert r.pages_checked > 0 and len(r.bad_pages) == r.pages_checked
    assert verify.verify_encryption(p, KEY).ok
    for k in (KEY, pp("recovery pass"), THIRD_KEY):
        c = open_enc(p, k)
        assert q(c, "select count(*) from t") == [(30,)]
        c.close()
    rep = rekey.rotate_key(p, KEY, drop_other_slots=True)
    assert rep.dropped_slots == [1, 2]
    for k in (pp("recovery pass"), THIRD_KEY):
        with pytest.raises(WrongKeyError):
            open_enc(p, k)
    with pytest.raises(WrongKeyError):
        rekey.rotate_key(p, OTHER_KEY)


def test_rotate_refuses_while_this_process_has_the_file_open(tmp_path):
    p = str(tmp_path / "a.db")
    c = make_db(p, KEY, rows=10)
    with pytest.raises(EncryptionError, match="exclusive access"):
        rekey.rotate_key(p, KEY, OTHER_KEY)
    c.close()
    rekey.rotate_key(p, KEY, OTHER_KEY)


HOLDER = """
import sys, time
from helpers.enc import open_enc
c = open_enc({p!r})
print(c.execute("select count(*) from t").fetchall(), flush=True)
sys.stdin.readline()
try:
    c.execute("insert into t(n) values (-5)")
    print("WROTE", flush=True)
except Exception as e:
    print("ERR", type(e).__name__, e, flush=True)
"""


def _holder(p: str) -> subprocess.Popen:
    h = subprocess.Popen([sys.executable, "-c", HOLDER.format(p=p)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert h.stdout is not None and h.stdout.readline().startswith("[(")
    return h


def test_rotate_in_wal_mode_refuses_while_another_process_has_it_open(tmp_path):
    p = str(tmp_path / "a.db")
    c = make_db(p, KEY, mode="wal", rows=200)
    want = digest(c)
    c.close()
    h = _holder(p)
    try:
        with pytest.raises(EncryptionError, match="exclusive access"):
            rekey.rotate_key(p, KEY, OTHER_KEY, busy_timeout=0.2)
        out, _ = h.communicate("go\n", timeout=30)
        assert "WROTE" in out  # the other connection was never disturbed
    finally:
        if h.poll() is None:
            h.kill()
    c = open_enc(p, KEY)
    assert q(c, "pragma journal_mode") == [("wal",)]  # left as it was
    assert q(c, "select count(*) from t") == [(201,)]
    assert q(c, "pragma integrity_check") == [("ok",)]
    q(c, "delete from t where n = -5")
    assert digest(c) == want
    c.close()


def test_rotate_in_rollback_mode_with_an_idle_connection_elsewhere(tmp_path):
    """Rollback mode cannot see an idle connection of another process: the rotation
    goes ahead, and that connection's next write fails (SQLITE_READONLY_DBMOVED)
    instead of reaching the replaced file."""
    p = str(tmp_path / "a.db")
    c = make_db(p, KEY, rows=200)
    want = digest(c)
    c.close()
    h = _holder(p)
    try:
        rekey.rotate_key(p, KEY, OTHER_KEY)
        out, _ = h.communicate("go\n", timeout=30)
    finally:
        if h.poll() is None:
            h.kill()
    assert "ERR" in out and ("readonly" in out.lower() or "moved" in out.lower()), out
    c = open_enc(p, OTHER_KEY)
    assert digest(c) == want
    c.close()


def _check_after_kill(p: str, want: str, mode: str, events) -> int:
    c, which = open_any(p)
    try:
        assert q(c, "pragma integrity_check") == [("ok",)], events
        assert digest(c) == want, events
        jm = q(c, "pragma journal_mode")[0][0]
        if which == 1 or mode == "delete":
            assert jm == mode, (jm, events)  # a rotated file keeps the mode
        else:
            assert jm in (mode, "delete"), (jm, events)  # crash after leaving WAL
    finally:
        c.close()
    return which


def _kill_loop(tmp_path, mode: str, runs: int, seed: int) -> None:
    rng = random.Random(seed)
    tmpl = str(tmp_path / "template.db")
    c = make_db(tmpl, KEY, mode=mode, rows=600, blob=3000)  # ~2.5 MB, ~600+ pages
    if mode == "wal":
        q(c, "pragma wal_checkpoint(truncate)")
    want = digest(c)
    c.close()
    assert not os.path.exists(tmpl + "-wal")
    # The events of a full run (phases and progress calls), once.
    probe = str(tmp_path / "probe.db")
    shutil.copyfile(tmpl, probe)
    names = [e.split(" ", 2)[2] for e in rotate_and_kill(probe, 10_000, rng)
             if e.startswith("EV")]
    assert "renamed" in names and sum(n.startswith("progress") for n in names) > 5, names
    # Every run stops at a random event; the first runs cover the phases around the
    # rename for sure, every third run is killed after a random delay instead.
    must = [names.index(x) + 1 for x in ("locked", "synced", "renamed")]
    if mode == "wal":
        must.append(names.index("wal-left") + 1)
    outcomes = []
    for run in range(runs):
        p = str(tmp_path / f"r{run}.db")
        shutil.copyfile(tmpl, p)
        second = None
        if mode == "delete":  # a second connection open on the file meanwhile
            second = open_enc(p, KEY)
            assert q(second, "select count(*) from u")
        if run < len(must):
            stop = must[run]
        else:
            stop = rng.randint(1, len(names)) if run % 3 != 2 else 0
        events = rotate_and_kill(p, stop, rng)
        if second is not None:
            second.close()
        which = _check_after_kill(p, want, mode, events)
        outcomes.append(which)
        # Resume: a later rotation from whichever key works completes, restores the
        # journal mode and cleans up.
        rekey.rotate_key(p, (KEY, OTHER_KEY)[which], THIRD_KEY)
        c = open_enc(p, THIRD_KEY)
        assert digest(c) == want
        assert q(c, "pragma journal_mode") == [(mode,)]
        assert q(c, "pragma integrity_check") == [("ok",)]
        c.close()
        left = [f for f in os.listdir(tmp_path) if f.startswith(f"r{run}.db")]
        assert left == [f"r{run}.db"], left
    assert set(outcomes) == {0, 1}, outcomes  # both the old and the new file occurred


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_rotation_killed_at_random_moments(tmp_path, mode):
    _kill_loop(tmp_path, mode, runs=5, seed=1200 + len(mode))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_rotation_killed_at_20_random_moments(tmp_path, mode):
    _kill_loop(tmp_path, mode, runs=20, seed=int(time.time()))


def test_rotation_schedule(tmp_path):
    p = str(tmp_path / "a.db")
    make_db(p, KEY, rows=5).close()
    assert not rekey.rotation_due(p, 90)
    info = rekey.rotation_info(p, 90, now=time.time() + 91 * 86400)
    assert info["due"] and info["age_days"] > 90
    assert not rekey.rotation_info(p, 0, now=time.time() + 1e9)["due"]  # no schedule
    cfg = heliosdb.load_config({"encryption": {"rotation_interval_days": 1}})
    assert not rekey.rotation_due(p, cfg)
    assert rekey.rotation_info(p, cfg, now=time.time() + 2 * 86400)["due"]
    assert rekey.rotation_info(p, cfg.encryption)["interval_days"] == 1
    # A file from before the header recorded the key's age: due (age unknown).
    raw = bytearray(open(p, "rb").read())
    raw[fmt.OFF_KEY_CREATED:fmt.OFF_KEY_CREATED + 8] = bytes(8)
    open(p, "wb").write(bytes(raw))
    c = open_enc(p)  # older files still open
    assert rekey.rotation_info(c, 90)["key_created"] is None
    assert rekey.rotation_due(c, 90)
    c.close()
    rekey.rotate_key(p, KEY)
    assert not rekey.rotation_due(p, 90)
    # Past the nonce warning fraction: due whatever the age.
    with open(p, "r+b") as f:
        f.seek(fmt.OFF_COUNTER)
        f.write(struct.pack(">Q", 2 ** 31 + 1))
    info = rekey.rotation_info(p, 90)
    assert info["due"] and info["nonce_due"]


# -------------------------------------------------------------- encrypt / decrypt ---

@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_encrypt_decrypt_round_trip(tmp_path, mode):
    plain = str(tmp_path / "plain.db")
    pc = apsw.Connection(plain)
    pc.execute(f"pragma journal_mode={mode}").fetchall()
    pc.execute("create table t(id integer primary key, b blob, s text, r real, n)")
    pc.execute("create index t_s on t(s)")
    pc.execute("create view v as select id, s from t")
    pc.execute("with recursive r(i) as (select 1 union all select i+1 from r where i<3000) "
               "insert into t(b, s, r, n) select randomblob(i % 500), 'marker-' || i, "
               "i / 7.0, case when i % 5 = 0 then null else i end from r")
    pc.execute("create table e(x)")
    want = dump(pc)
    pc.close()
    enc = str(tmp_path / "enc.db")
    calls = []
    n = rekey.encrypt(plain, enc, KEY, progress=lambda d, t: calls.append((d, t)))
    assert monotonic_ending_at_total(calls) and calls[-1][1] == n
    raw = open(enc, "rb").read()
    assert raw.startswith(fmt.MAGIC) and b"marker-" not in raw and b"SQLite format" not in raw
    c = open_enc(enc, KEY)
    assert dump(c) == want
    assert q(c, "pragma integrity_check") == [("ok",)]
    assert q(c, "pragma journal_mode") == [(mode,)]
    c.close()
    assert verify.verify_encryption(enc, KEY).ok
    back = str(tmp_path / "back.db")
    calls = []
    rekey.decrypt(enc, back, KEY, progress=lambda d, t: calls.append((d, t)))
    assert monotonic_ending_at_total(calls)
    bc = apsw.Connection(back)  # plain SQLite reads it
    assert dump(bc) == want
    assert bc.execute("pragma integrity_check").fetchall() == [("ok",)]
    bc.close()
    assert sorted(os.listdir(tmp_path)) == ["back.db", "enc.db", "plain.db"]


def test_encrypt_and_decrypt_refuse_what_they_should(tmp_path):
    plain = str(tmp_path / "plain.db")
    apsw.Connection(plain).execute("create table t(x)")
    enc = str(tmp_path / "enc.db")
    make_db(enc, KEY, rows=3).close()
    with pytest.raises(FileExistsError):
        rekey.encrypt(plain, enc, KEY)
    with pytest.raises(EncryptionError, match="already encrypted"):
        rekey.encrypt(enc, str(tmp_path / "x.db"), KEY)
    with pytest.raises(NotEncryptedError):
        rekey.decrypt(plain, str(tmp_path / "y.db"), KEY)
    with pytest.raises(WrongKeyError):
        rekey.decrypt(enc, str(tmp_path / "z.db"), OTHER_KEY)
    with pytest.raises(FileExistsError):
        rekey.decrypt(enc, plain, KEY)
    assert sorted(os.listdir(tmp_path)) == ["enc.db", "plain.db"]


def test_backup_of_an_encrypted_database_stays_encrypted(tmp_path):
    src_p, dst_p = str(tmp_path / "src.db"), str(tmp_path / "bak.db")
    src = heliosdb.connect(src_p, key=KEY)
    src.execute("create table t(s)")
    src.executemany("insert into t values (?)", [(f"backup-marker-{i}",) for i in range(500)])
    src.commit()
    dst = heliosdb.connect(dst_p, key=OTHER_KEY)
    src.backup(dst)
    dst.close()
    raw = open(dst_p, "rb").read()
    assert raw.startswith(fmt.MAGIC) and b"backup-marker" not in raw
    assert header(dst_p).file_id != header(src_p).file_id  # its own file id and DEK
    with pytest.raises(KeyRequiredError):
        heliosdb.connect(dst_p)
    with pytest.raises(WrongKeyError):
        heliosdb.connect(dst_p, key=KEY)
    with pytest.raises(apsw.NotADBError):
        apsw.Connection(dst_p).execute("select * from t").fetchall()
    d2 = heliosdb.connect(dst_p, key=OTHER_KEY)
    assert d2.execute("select count(*) from t").fetchall() == [(500,)]
    d2.close()
    # A plaintext target is refused loudly, and so is VACUUM INTO an unkeyed file.
    plain = heliosdb.connect(str(tmp_path / "plain.db"))
    with pytest.raises(EncryptionError, match="refusing"):
        src.backup(plain)
    plain.close()
    with pytest.raises(heliosdb.DatabaseError):
        src.execute("vacuum into ?", (str(tmp_path / "vac.db"),))
    assert not os.path.exists(tmp_path / "vac.db") or \
        b"backup-marker" not in open(tmp_path / "vac.db", "rb").read()
    src.close()


# -------------------------------------------------------------------- verification ---

def test_verify_names_every_bad_page(tmp_path):
    p = str(tmp_path / "a.db")
    c = make_db(p, KEY, mode="wal", rows=300)
    q(c, "pragma wal_checkpoint(truncate)")
    q(c, "pragma wal_autocheckpoint=0")
    for i in range(5):
        q(c, "update t set n = -n where id % 10 = ?", (i,))
    c.close() if False else None
    calls = []
    r = verify.verify_encryption(p, KEY, progress=lambda d, t: calls.append((d, t)))
    assert r.ok and r.wal_frames_checked > 5, r.summary()
    assert monotonic_ending_at_total(calls)
    n_main = r.pages_checked - r.wal_frames_checked
    # Tamper with two main pages and one WAL frame in the middle of the log.
    ps = r.page_size
    with open(p, "r+b") as f:
        for pg in (2, n_main):
            f.seek(fmt.HEADER_SIZE + (pg - 1) * ps + 100)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 1]))
    with open(p + "-wal", "r+b") as f:
        f.seek(32 + 24 + 50)  # first frame's page
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x80]))
    r = verify.verify_encryption(p, KEY)
    assert not r.ok
    bad = {(os.path.basename(f), pg) for f, pg, _why in r.bad_pages}
    assert ("a.db", 2) in bad and ("a.db", n_main) in bad
    assert any(f == "a.db-wal" for f, _pg in bad)
    assert len(r.bad_pages) == 3, r.summary()
    assert verify.main([p, "--key-file", _keyfile(tmp_path, KEY)]) == 1
    with pytest.raises(WrongKeyError):
        verify.verify_encryption(p, OTHER_KEY)
    c.close()


def _keyfile(tmp_path, key: bytes) -> str:
    kf = tmp_path / "k.bin"
    kf.write_bytes(key)
    return str(kf)


def test_verify_cli_ok_and_truncated_file(tmp_path):
    p = str(tmp_path / "a.db")
    make_db(p, KEY, rows=100).close()
    assert verify.main([p, "--key-file", _keyfile(tmp_path, KEY)]) == 0
    assert verify.main([p, "--key-file", _keyfile(tmp_path, OTHER_KEY)]) == 2
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 100)
    r = verify.verify_encryption(p, KEY)
    assert not r.ok and "partial page" in r.bad_pages[-1][2]


def test_header_reads_keep_a_plain_connections_lock(tmp_path):
    """connect() of a plaintext file reads its first bytes: that must not drop the
    POSIX locks another connection of this process holds on it."""
    p = str(tmp_path / "plain.db")
    a = apsw.Connection(p)
    a.execute("create table t(x)")
    a.execute("begin immediate")
    a.execute("insert into t values (1)")
    heliosdb.connect(p).close()
    r = subprocess.run([sys.executable, "-c", f"""
import apsw
c = apsw.Connection({p!r})
try:
    c.execute("begin immediate"); print("GOT")
except apsw.BusyError:
    print("BUSY")
"""], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "BUSY", r.stdout + r.stderr
    a.execute("commit")
    a.close()


def test_attach_escape_reason():
    assert rekey.attach_escape_reason("x.db") is None
    assert rekey.attach_escape_reason("file:x.db") is None
    assert rekey.attach_escape_reason("file:x.db?vfs=heliosdb") is None
    assert "bypass" in rekey.attach_escape_reason("file:/t/x.db?mode=rwc&vfs=unix")


def test_rotation_stops_at_a_corrupt_page_and_leaves_the_file(tmp_path):
    p = str(tmp_path / "a.db")
    make_db(p, KEY, rows=300).close()
    ps = header(p).page_size
    with open(p, "r+b") as f:
        f.seek(fmt.HEADER_SIZE + 4 * ps + 10)  # page 5
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 4]))
    before = open(p, "rb").read()
    with pytest.raises(heliosdb.CorruptPageError) as ei:
        rekey.rotate_key(p, KEY, OTHER_KEY)
    assert ei.value.page == 5
    assert open(p, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["a.db"]
