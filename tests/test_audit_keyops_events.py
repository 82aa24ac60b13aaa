"""Key operations are recorded in the audit log (issue 12 "each operation is recorded in
the audit log"; docs/FORMAT.md "Key operations"): KEY_CHANGE for passphrase changes and
key slots, KEY_ROTATION for rotations, failed attempts as failed events, never any key
material, and the chain verifies after each operation."""
from __future__ import annotations

import json
import os

import apsw
import pytest

import heliosdb
from heliosdb import native
from heliosdb.crypto import Key, rekey
from heliosdb.errors import EncryptionError

from helpers.enc import KEY, OTHER_KEY, open_enc, q

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

THIRD_KEY = bytes(range(7, 39))
SECRETS = ("first secret", "second secret", "third secret")


def pp(text: str) -> Key:
    return Key.passphrase(text, "test")


def make_audited(path, key=KEY, *, wal=False, rows=50, config="default"):
    conn = heliosdb.connect(str(path), key=key, config=config, audit_user="alice")
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    conn.commit()
    conn.close()


def events(path, key, op=None, table="__audit_log"):
    c = open_enc(path, key)
    try:
        where = "" if op is None else f" WHERE operation = '{op}'"
        names = [r[1] for r in q(c, f"PRAGMA table_info({table})")]
        return [dict(zip(names, r)) for r in q(c, f"SELECT * FROM {table}{where} ORDER BY id")]
    finally:
        c.close()


def details(ev):
    return json.loads(ev["metadata"])["details"]


def all_text(path, key):
    """Every value of the audit table and its meta table, as text."""
    c = open_enc(path, key)
    try:
        rows = q(c, "SELECT * FROM __audit_log") + q(c, "SELECT * FROM __audit_meta")
    finally:
        c.close()
    return repr(rows) + " ".join(v.hex() for r in rows for v in r
                                 if isinstance(v, (bytes, bytearray)))


def assert_no_key_material(path, key, *extra):
    text = all_text(path, key)
    for secret in (*SECRETS, KEY.hex(), OTHER_KEY.hex(), THIRD_KEY.hex(), *extra):
        assert secret not in text


def assert_verified(path, key):
    rep = heliosdb.audit.verify(str(path), key=key)
    assert rep.ok, rep
    return rep


def test_change_passphrase_records_key_change(tmp_path):
    p = str(tmp_path / "a.db")
    make_audited(p, pp(SECRETS[0]))
    n0 = len(events(p, pp(SECRETS[0])))
    new = rekey.change_passphrase(p, pp(SECRETS[0]), pp(SECRETS[1]), actor="bob",
                                  reason="quarterly change")
    evs = events(p, pp(SECRETS[1]))
    assert len(evs) == n0 + 1
    ev = evs[-1]
    assert ev["operation"] == "KEY_CHANGE" and ev["success"] == 1 and ev["error"] is None
    assert ev["user"] == "bob" and ev["reason"] == "quarterly change"
    d = details(ev)
    assert d["action"] == "change_passphrase"
    assert d["old_slot"] == 0 and d["new_slot"] == new
    assert d["old"]["kind"] == "passphrase" and d["new"]["kind"] == "passphrase"
    assert_verified(p, pp(SECRETS[1]))
    assert_no_key_material(p, pp(SECRETS[1]))


def test_add_and_remove_slots_record_key_change(tmp_path):
    p = str(tmp_path / "a.db")
    make_audited(p)
    i = rekey.add_key_slot(p, KEY, pp(SECRETS[2]), actor="carol")
    j = rekey.add_key_slot(p, KEY, OTHER_KEY, actor="carol", reason="recovery")
    assert rekey.remove_key_slot(p, KEY, i, actor="dave") == i
    assert rekey.remove_key_slot(p, KEY, OTHER_KEY, actor="dave") == j
    evs = events(p, KEY, "KEY_CHANGE")
    assert [(e["user"], details(e)["action"], details(e)["slot"], details(e)["kind"])
            for e in evs] == [("carol", "add_key_slot", i, "passphrase"),
                              ("carol", "add_key_slot", j, "raw"),
                              ("dave", "remove_key_slot", i, "passphrase"),
                              ("dave", "remove_key_slot", j, "raw")]
    assert evs[1]["reason"] == "recovery"
    assert all(e["success"] == 1 for e in evs)
    assert details(evs[0])["time_cost"] >= 1  # KDF parameters, never the salt or key
    assert_verified(p, KEY)
    assert_no_key_material(p, KEY)


def test_default_actor_is_the_login_name(tmp_path):
    import getpass

    p = str(tmp_path / "a.db")
    make_audited(p)
    rekey.add_key_slot(p, KEY, OTHER_KEY)
    assert events(p, KEY, "KEY_CHANGE")[-1]["user"] == getpass.getuser()


def test_failed_slot_operation_records_failed_event(tmp_path):
    p = str(tmp_path / "a.db")
    make_audited(p)
    with pytest.raises(EncryptionError, match="last key slot"):
        rekey.remove_key_slot(p, KEY, 0, actor="eve")
    with pytest.raises(EncryptionError, match="no key slot 5"):
        rekey.remove_key_slot(p, KEY, 5, actor="eve")
    evs = events(p, KEY, "KEY_CHANGE")
    assert [(e["success"], details(e)["slot"]) for e in evs] == [(0, 0), (0, 5)]
    assert "last key slot" in evs[0]["error"] and "no key slot 5" in evs[1]["error"]
    assert evs[0]["user"] == "eve"
    assert_verified(p, KEY)
    c = open_enc(p, KEY)  # nothing changed
    c.close()


def test_slot_change_refused_when_the_log_cannot_be_written(tmp_path):
    p = str(tmp_path / "a.db")
    make_audited(p)
    holder = open_enc(p, KEY)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(EncryptionError, match="nothing was changed"):
            rekey.add_key_slot(p, KEY, OTHER_KEY, busy_timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [s["kind"] for s in rekey.list_key_slots(p)] == ["raw"]
    assert events(p, KEY, "KEY_CHANGE") == []


def test_database_without_audit_log_gets_none(tmp_path):
    p = str(tmp_path / "a.db")
    c = open_enc(p, KEY)
    q(c, "create table t(x)")
    c.close()
    rekey.add_key_slot(p, KEY, OTHER_KEY)
    rekey.change_passphrase(p, OTHER_KEY, THIRD_KEY)
    rekey.rotate_key(p, KEY, keep_keys=[THIRD_KEY])
    c = open_enc(p, KEY)
    names = [r[0] for r in q(c, "select name from sqlite_master where type = 'table'")]
    c.close()
    assert names == ["t"]


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
@pytest.mark.parametrize("method", ["pages", "backup"])
def test_rotation_records_one_event_in_the_new_file(tmp_path, wal, method):
    p = str(tmp_path / "a.db")
    make_audited(p, wal=wal, rows=300)
    before = events(p, KEY)
    from heliosdb.crypto import read_header

    h0 = read_header(p)
    rep = rekey.rotate_key(p, KEY, OTHER_KEY, method=method, actor="ops",
                           reason="90-day rotation")
    evs = events(p, OTHER_KEY)
    assert evs[:len(before)] == before  # the chain carried over unchanged
    rot = [e for e in evs if e["operation"] == "KEY_ROTATION"]
    assert len(rot) == 1 and evs[-1] is rot[0]
    ev = rot[0]
    assert ev["success"] == 1 and ev["user"] == "ops" and ev["reason"] == "90-day rotation"
    d = details(ev)
    assert d["old_generation"] == h0.generation and d["new_generation"] == rep.generation
    assert d["old_file_id"] == h0.file_id.hex() and d["new_file_id"] == rep.file_id
    assert d["new_file_id"] == read_header(p).file_id.hex()
    assert d["pages"] == rep.pages > 0 and d["method"] == method
    assert d["journal_mode"] == ("wal" if wal else "delete")
    assert_verified(p, OTHER_KEY)
    assert_no_key_material(p, OTHER_KEY)
    # The event was written under the new key, like every other page.
    from heliosdb.crypto import verify

    assert verify.verify_encryption(p, OTHER_KEY).ok


def test_rotation_killed_before_rename_leaves_no_event(tmp_path, monkeypatch):
    p = str(tmp_path / "a.db")
    make_audited(p)
    n0 = len(events(p, KEY))

    def hook(name):
        if name == "synced":  # the event is committed in the copy, not yet renamed
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(rekey, "_phase_hook", hook)
    with pytest.raises(KeyboardInterrupt):
        rekey.rotate_key(p, KEY, OTHER_KEY)
    monkeypatch.setattr(rekey, "_phase_hook", None)
    evs = events(p, KEY)
    assert len(evs) == n0 and not [e for e in evs if e["operation"] == "KEY_ROTATION"]
    assert_verified(p, KEY)
    rekey.rotate_key(p, KEY, OTHER_KEY)  # and a later rotation records exactly one
    assert len(events(p, OTHER_KEY, "KEY_ROTATION")) == 1
    assert_verified(p, OTHER_KEY)


def test_failed_rotation_records_failed_event_in_the_original(tmp_path):
    p = str(tmp_path / "a.db")
    make_audited(p)
    rekey.add_key_slot(p, KEY, THIRD_KEY)
    with pytest.raises(EncryptionError, match="would be lost"):
        rekey.rotate_key(p, KEY, OTHER_KEY, actor="ops")
    evs = events(p, KEY, "KEY_ROTATION")
    assert len(evs) == 1 and evs[0]["success"] == 0 and "would be lost" in evs[0]["error"]
    assert details(evs[0])["action"] == "rotate_key" and "old_file_id" in details(evs[0])
    assert_verified(p, KEY)
    rep = rekey.rotate_key(p, KEY, OTHER_KEY, keep_keys=[THIRD_KEY])
    evs = events(p, OTHER_KEY, "KEY_ROTATION")
    assert [e["success"] for e in evs] == [0, 1]
    assert details(evs[1])["kept_slots"] == rep.kept_slots
    assert_verified(p, OTHER_KEY)
    assert_no_key_material(p, OTHER_KEY)


def test_configured_audit_table_name_is_found_through_meta(tmp_path):
    p = str(tmp_path / "a.db")
    conn = heliosdb.connect(p, key=KEY, config={"extends": "default",
                                                "audit": {"table_name": "my_log"}})
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    rekey.add_key_slot(p, KEY, OTHER_KEY)
    rekey.rotate_key(p, KEY, keep_keys=[OTHER_KEY])
    ops = [e["operation"] for e in events(p, KEY, table="my_log")]
    assert ops[-2:] == ["KEY_CHANGE", "KEY_ROTATION"]
    assert heliosdb.audit.verify(p, key=KEY, table="my_log").ok


def test_encrypt_and_decrypt_record_in_the_copy(tmp_path):
    plain, enc, back = (str(tmp_path / n) for n in ("p.db", "e.db", "d.db"))
    conn = heliosdb.connect(plain, config="default")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES ('plain row')")
    conn.commit()
    conn.close()
    assert heliosdb.audit.verify(plain).ok
    n0 = len(events_plain(plain))
    rekey.encrypt(plain, enc, KEY, actor="ops", reason="take in")
    assert len(events_plain(plain)) == n0  # the source is never written
    evs = events(enc, KEY)
    assert len(evs) == n0 + 1
    d = details(evs[-1])
    assert evs[-1]["operation"] == "KEY_CHANGE" and evs[-1]["user"] == "ops"
    assert d["action"] == "encrypt" and d["source"] == "p.db" and d["pages"] > 0
    from heliosdb.crypto import read_header

    assert d["file_id"] == read_header(enc).file_id.hex()
    assert_verified(enc, KEY)
    assert_no_key_material(enc, KEY)
    rekey.decrypt(enc, back, KEY, actor="ops", reason="export")
    assert len(events(enc, KEY)) == n0 + 1
    evs = events_plain(back)
    assert len(evs) == n0 + 2
    d = details(evs[-1])
    assert d["action"] == "decrypt" and d["source"] == "e.db"
    assert d["source_file_id"] == read_header(enc).file_id.hex()
    assert heliosdb.audit.verify(back).ok


def events_plain(path):
    c = apsw.Connection(path)
    try:
        names = [r[1] for r in c.execute("PRAGMA table_info(__audit_log)").fetchall()]
        return [dict(zip(names, r)) for r in
                c.execute("SELECT * FROM __audit_log ORDER BY id").fetchall()]
    finally:
        c.close()


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_rotation_killed_at_every_step_has_the_event_exactly_when_rotated(tmp_path, wal):
    """kill -9 of a rotating child at each phase and progress call: the file opens with
    the old key and has no KEY_ROTATION event, or with the new key and has exactly one;
    the chain verifies either way."""
    import random
    import shutil

    from helpers.keyops import rotate_and_kill

    template = str(tmp_path / "template.db")
    make_audited(template, wal=wal, rows=400)
    n0 = len(events(template, KEY))
    p = str(tmp_path / "a.db")
    shutil.copy(template, p)
    run = rotate_and_kill(p, 10_000, random.Random(1), step=4)
    assert run[-1] == "DONE"
    phases = [e for e in run if e.startswith("EV")]
    assert any(e.endswith(" audited") for e in phases)
    seen = set()
    for stop_at in range(1, len(phases) + 1):
        for f in ("", "-wal", "-shm", "-journal", ".helios-rotate", ".helios-rotate.mode"):
            if os.path.exists(p + f):
                os.unlink(p + f)
        shutil.copy(template, p)
        rotate_and_kill(p, stop_at, random.Random(stop_at), step=4)
        try:
            key = KEY
            evs = events(p, KEY)
        except Exception:  # noqa: BLE001 - WrongKeyError: the rotated file
            key = OTHER_KEY
            evs = events(p, OTHER_KEY)
        rot = [e for e in evs if e["operation"] == "KEY_ROTATION"]
        assert len(rot) == (0 if key == KEY else 1), phases[stop_at - 1]
        assert len(evs) == n0 + len(rot)
        assert_verified(p, key)
        seen.add(key)
    assert seen == {KEY, OTHER_KEY}
