"""Retention purge (archive, delete, anchor, RETENTION_PURGE) and legal holds."""
from __future__ import annotations

import gzip
import json
import os

import pytest

import heliosdb
import heliosdb.config
from heliosdb.audit import store
from heliosdb.audit.events import EventFields
from heliosdb.audit.export import verify_export, verify_export_chain
from heliosdb.audit.query import to_us
from heliosdb.audit.retention import LegalHoldError
from helpers.audit_log import stamp

DAY = 86_400_000_000
T0 = to_us("2031-01-01T00:00:00Z")


@pytest.fixture(autouse=True)
def clock_after_t0(monkeypatch):
    """The events here are stamped in 2031: purge() measures retention from the real
    clock (now= may not run ahead of it), so these tests set that clock past T0."""
    from heliosdb.audit import retention
    monkeypatch.setattr(retention, "_clock_us", lambda: T0 + 20_000 * DAY)


def make(db_path, **audit):
    cfg = heliosdb.config.load_config({"extends": "verbose",
                                       "audit": {"retention_days": 30, **audit}})
    return heliosdb.connect(db_path, config=cfg, audit_user="alice")


@pytest.fixture
def conn(db_path):
    c = make(db_path)
    # day 0: DDL and DML; day 10: DML; day 40: DML
    stamp(c, [EventFields("CREATE_TABLE", target="t", user="alice"),
              EventFields("INSERT", target="t", user="alice", affected_rows=1)], T0)
    stamp(c, [EventFields("UPDATE", target="t", user="bob", affected_rows=1),
              EventFields("SELECT", target="t", user="bob", success=0, error="x")],
          T0 + 10 * DAY)
    stamp(c, [EventFields("DELETE", target="t", user="bob", affected_rows=1)], T0 + 40 * DAY)
    yield c
    c.close()


def test_purge_archives_deletes_anchors_and_verifies(conn, tmp_path):
    a = conn.audit
    before = a.query().all()
    login = before[0]  # LOGIN at real time (2026), the oldest
    cutoff_victims = [e for e in before if e.ts_us < T0 + 15 * DAY]
    res = a.purge(now=T0 + 45 * DAY, archive=tmp_path / "arch")
    # everything older than 30 days at day 45: LOGIN, day 0 and day 10 events
    assert res.purged == len(cutoff_victims) == 5
    assert (res.first_id, res.last_id) == (login.id, cutoff_victims[-1].id)
    assert res.anchor_id == res.last_id
    assert res.anchor_checksum == cutoff_victims[-1].checksum.hex()
    rep = a.verify()
    assert rep.ok, rep.message
    remaining = a.query().all()
    assert remaining[0].id == res.last_id + 1
    assert remaining[0].prev_hash.hex() == res.anchor_checksum
    assert store.anchor(a._db, a.table).id == res.last_id
    # the archive: gzip JSON Lines in the export format, verifiable on its own
    assert os.path.dirname(res.archive) == str(tmp_path / "arch")
    with gzip.open(res.archive, "rt") as f:
        header = json.loads(f.readline())
    assert header["archive"] is True and header["first_id"] == 1
    arep = verify_export(res.archive)
    assert arep.ok and arep.events_checked == 5
    # the purge is recorded, with the archive's digest
    ev = a.query().operation("RETENTION_PURGE").first()
    d = json.loads(ev.metadata)["details"]
    assert (d["first_id"], d["last_id"], d["purged"]) == (1, res.last_id, 5)
    import hashlib
    assert d["archive_sha256"] == hashlib.sha256(open(res.archive, "rb").read()).hexdigest()
    assert ev.affected_rows == 5
    # archive + a later export continue each other
    m = a.export(tmp_path / "after.jsonl", after_id=res.last_id)
    assert verify_export_chain([res.archive, tmp_path / "after.jsonl"]).ok
    # exporting purged events is refused
    with pytest.raises(heliosdb.ProgrammingError):
        a.export(tmp_path / "old.jsonl", after_id=0)
    assert m.first_id == res.last_id + 1


def test_purge_twice_and_reopen_verify(conn, db_path, tmp_path):
    a = conn.audit
    r1 = a.purge(now=T0 + 45 * DAY, archive=tmp_path)
    r2 = a.purge(now=T0 + 75 * DAY, archive=tmp_path)
    assert r2.first_id == r1.last_id + 1 and r2.purged >= 1
    assert a.verify().ok
    assert verify_export_chain([r1.archive, r2.archive]).ok
    conn.close()
    assert heliosdb.audit.verify(db_path).ok
    c = make(db_path)
    assert c.audit.verify().ok
    assert c.audit.query().first().prev_hash.hex() == r2.anchor_checksum
    c.close()


def test_nothing_expired_is_still_recorded(conn, tmp_path):
    res = conn.audit.purge(now=T0 + 1 * DAY, archive=tmp_path)
    # LOGIN (real time, 2026) is older than 30 days at 2031: only it
    assert res.purged == 1
    res = conn.audit.purge(now=T0 + 1 * DAY, archive=tmp_path)
    assert res.purged == 0 and res.archive is None
    evs = conn.audit.query().operation("RETENTION_PURGE").all()
    assert len(evs) == 2 and evs[-1].affected_rows == 0
    assert conn.audit.verify().ok


def test_dry_run_changes_nothing(conn):
    n = conn.audit.query().count()
    res = conn.audit.purge(now=T0 + 45 * DAY, dry_run=True)
    assert res.dry_run and res.purged == 5 and res.archive is None
    assert conn.audit.query().count() == n


def test_per_operation_override_holds_back_the_prefix(db_path, tmp_path):
    # overrides shorter than the active window purge earlier; DDL keeps the full year
    c = make(db_path, retention_days=365, retention_overrides={"DML": 30, "SECURITY": 100})
    stamp(c, [EventFields("INSERT", target="t", user="a")], T0)
    stamp(c, [EventFields("CREATE_TABLE", target="t", user="a")], T0 + DAY)
    stamp(c, [EventFields("INSERT", target="t", user="a")], T0 + 2 * DAY)
    ids = c.audit.query().ids_only()
    res = c.audit.purge(now=T0 + 60 * DAY, archive=tmp_path)
    # LOGIN is SECURITY (100 days) but from 2026: expired; INSERT day 0 (DML, 30 days)
    # expired; CREATE_TABLE (365 days) is not: it holds back the INSERT of day 2
    assert res.last_id == ids[1]
    assert res.blocked_by == ids[2] and "365 days" in res.blocked_reason
    assert c.audit.verify().ok
    res = c.audit.purge(now=T0 + 400 * DAY, archive=tmp_path)
    assert res.first_id == ids[2] and res.last_id >= ids[3]
    assert c.audit.verify().ok
    c.close()


def test_failed_events_kept_as_security(db_path, tmp_path):
    c = make(db_path, retention_days=365, retention_overrides={"QUERY": 7, "SECURITY": 90})
    stamp(c, [EventFields("SELECT", target="t", user="a", success=0, error="denied")], T0)
    stamp(c, [EventFields("SELECT", target="t", user="a")], T0 + DAY)
    fid = c.audit.query().success(False).ids_only()[0]
    res = c.audit.purge(now=T0 + 60 * DAY, archive=tmp_path)
    assert res.blocked_by == fid
    c.close()


def test_default_archive_next_to_the_database(conn, db_path):
    res = conn.audit.purge(now=T0 + 45 * DAY)
    assert os.path.dirname(res.archive) == os.path.dirname(os.path.abspath(db_path))
    assert res.archive.endswith(".jsonl.gz") and os.path.exists(res.archive)


def test_in_memory_needs_an_archive_path(tmp_path):
    c = heliosdb.connect(":memory:", config="verbose")
    with pytest.raises(heliosdb.ProgrammingError):
        c.audit.purge(now=T0 + 10_000 * DAY)
    res = c.audit.purge(now=T0 + 10_000 * DAY, archive=tmp_path / "m.jsonl.gz")
    assert res.purged >= 1 and c.audit.verify().ok
    c.close()


def test_legal_hold_blocks_purge_and_is_audited(conn, tmp_path):
    a = conn.audit
    hid = a.hold("litigation 2031-17", matter="ACME v. Us")
    assert [h["id"] for h in a.holds()] == [hid]
    n = a.query().count()
    arch = tmp_path / "arch"
    arch.mkdir()
    with pytest.raises(LegalHoldError):
        a.purge(now=T0 + 45 * DAY, archive=arch)
    assert isinstance(LegalHoldError("x"), heliosdb.OperationalError)
    assert not list(arch.iterdir())
    refused = a.query().operation("RETENTION_PURGE").first()
    assert refused.success == 0 and "legal hold" in refused.error
    assert a.query().count() == n + 1  # nothing deleted, the refusal recorded
    held = a.query().operation("LEGAL_HOLD").first()
    assert held.reason == "litigation 2031-17"
    assert json.loads(held.metadata)["details"]["hold_id"] == hid
    # persisted: another connection sees the hold
    c2 = make(conn._database)
    assert [h["id"] for h in c2.audit.holds()] == [hid]
    with pytest.raises(LegalHoldError):
        c2.audit.purge(now=T0 + 45 * DAY, archive=tmp_path)
    c2.close()
    a.release(reason="case closed")
    assert a.holds() == []
    rel = a.query().operation("LEGAL_HOLD_RELEASE").first()
    assert rel.reason == "case closed"
    assert a.purge(now=T0 + 45 * DAY, archive=tmp_path).purged >= 5
    assert a.verify().ok


def test_hold_survives_removal_of_its_meta_row(conn, tmp_path):
    a = conn.audit
    hid = a.hold("regulator inquiry")
    with a._internal():
        store.set_meta(a._db, a.table, "legal_holds", None)
    holds = a.holds()
    assert [h["id"] for h in holds] == [hid] and holds[0]["source"] == "log"
    with pytest.raises(LegalHoldError):
        a.purge(now=T0 + 45 * DAY, archive=tmp_path)


def test_several_holds(conn):
    a = conn.audit
    h1 = a.hold("one")
    h2 = a.hold("two")
    with pytest.raises(heliosdb.ProgrammingError):
        a.release()
    a.release(h1)
    assert [h["id"] for h in a.holds()] == [h2]
    with pytest.raises(heliosdb.ProgrammingError):
        a.release("nope")
    a.release()
    with pytest.raises(heliosdb.ProgrammingError):
        a.release()
    with pytest.raises(heliosdb.ProgrammingError):
        a.hold("   ")


def test_purge_refuses_inside_a_transaction(conn, tmp_path):
    conn.execute("CREATE TABLE x(y)")
    conn.execute("INSERT INTO x VALUES (1)")
    with pytest.raises(heliosdb.ProgrammingError):
        conn.audit.purge(now=T0 + 45 * DAY, archive=tmp_path)
    conn.rollback()


def test_user_sql_cannot_delete_from_the_log(conn):
    with pytest.raises(heliosdb.DatabaseError):
        conn.execute("DELETE FROM __audit_log WHERE id = 1")


def test_purge_then_checkpoint_verify(conn, tmp_path):
    key = b"s" * 32
    cp = conn.audit.checkpoint(key)
    conn.audit.purge(now=T0 + 45 * DAY, archive=tmp_path)
    assert conn.audit.verify(checkpoint=cp, hmac_key=key).ok
    cp2 = conn.audit.checkpoint(key)
    assert conn.audit.verify(checkpoint=cp2, hmac_key=key, since_checkpoint=True).ok


def test_retention_status(conn):
    st = conn.audit.retention_status(now=T0 + 45 * DAY)
    assert st["purgeable_now"] == 5 and st["anchor_id"] == 0
    assert st["retention_days"] == 30 and st["legal_holds"] == []


# --- issue 16 item 4: retention runs by itself -----------------------------------------------

def test_auto_purge_at_connect_once_a_day_never_under_a_hold(tmp_path, monkeypatch):
    from heliosdb.audit import retention
    p = str(tmp_path / "auto.db")
    clock = [T0]
    monkeypatch.setattr(retention, "_clock_us", lambda: clock[0])
    conn = heliosdb.connect(p, config={"extends": "default", "audit": {"auto_purge": False}})
    stamp(conn, [EventFields("INSERT", "t", "u", "s", "INSERT INTO t VALUES (1)", 1, 1, None,
                             None, None, None, None)] * 3, at_us=T0)
    conn.close()
    def last_purge(c):
        evs = c.audit.query().operation("RETENTION_PURGE").all()
        return evs[-1].id if evs else None

    conn = heliosdb.connect(p, config="default")  # auto_purge on: runs at this connect
    assert conn.config.audit.auto_purge
    # at T0 (2031) the 2026 events of the first connection are past 90 days: purged
    first = last_purge(conn)
    assert first is not None and conn.audit.query().operation("INSERT").count() == 3
    conn.close()
    clock[0] = T0 + 200 * DAY  # the 2031 events are past 90 days now
    conn = heliosdb.connect(p, config="default")
    second = last_purge(conn)
    assert second is not None and second > first
    assert conn.audit.query().operation("INSERT").count() == 0  # archived, then purged
    assert conn.audit.verify().ok
    conn.close()
    clock[0] += 3_600 * 1_000_000  # an hour later: at most once a day
    conn = heliosdb.connect(p, config="default")
    assert last_purge(conn) == second
    hold = conn.audit.hold("litigation")
    stamp(conn, [EventFields("INSERT", "t", "u", "s", "x", 1, 1, None, None, None, None,
                             None)], at_us=T0 + 201 * DAY)
    conn.close()
    clock[0] = T0 + 400 * DAY
    conn = heliosdb.connect(p, config="default")
    assert last_purge(conn) == second  # a legal hold is in force: skipped
    assert conn.audit.query().operation("INSERT").count() == 1
    conn.audit.release(hold)
    conn.close()
    assert sum(f.endswith(".gz") for f in os.listdir(tmp_path)) >= 2, os.listdir(tmp_path)
