"""Forensics: timeline() and suspicious(), on logs made by the tests."""
from __future__ import annotations

import pytest

import heliosdb
import heliosdb.config
from heliosdb.audit.events import EventFields
from heliosdb.audit.forensics import has_where
from heliosdb.audit.query import to_us
from helpers.audit_log import stamp

MON_NOON_PARIS = to_us("2031-03-03T11:00:00Z")   # Monday 12:00 in Paris (CET, UTC+1)
MON_2330_PARIS = to_us("2031-03-03T22:30:00Z")   # Monday 23:30 in Paris, 22:30 UTC
SAT_NOON = to_us("2031-03-08T11:00:00Z")         # Saturday
PARIS = {"start": "20:00", "end": "07:00", "timezone": "Europe/Paris", "weekends": True}


@pytest.fixture
def conn(db_path):
    c = heliosdb.connect(db_path, config="verbose", audit_user="alice")
    c.execute("CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT)")
    c.execute("CREATE TABLE visits(id INTEGER PRIMARY KEY, pid INTEGER)")
    c.executemany("INSERT INTO patients(name) VALUES (?)", [(f"p{i}",) for i in range(150)])
    c.commit()
    yield c
    c.close()


def kinds(findings):
    return {f.kind for f in findings}


def test_has_where():
    assert has_where("DELETE FROM t") is False
    assert has_where("delete from t;") is False
    assert has_where("DELETE FROM t WHERE id = 1") is True
    assert has_where("UPDATE t SET a = (SELECT b FROM c WHERE c.id = 1)") is False
    assert has_where("UPDATE t SET a = 1 WHERE 1=1") is False
    assert has_where("UPDATE t SET a = 1 WHERE 1 = 1") is False
    assert has_where("DELETE FROM t WHERE true") is False
    assert has_where("DELETE FROM t WHERE id IN (SELECT id FROM u)") is True
    assert has_where("DELETE FROM t -- WHERE id = 1") is False
    assert has_where("DELETE FROM t /* WHERE x */") is False
    assert has_where("DELETE FROM \"where\"") is False
    assert has_where("DELETE FROM t WHERE name = 'WHERE'") is True
    assert has_where("WITH x AS (SELECT 1 WHERE 1) DELETE FROM t") is False
    assert has_where("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN x") is True
    assert has_where("UPDATE t SET a = 1 FROM u WHERE u.id = t.id") is True
    assert has_where(None) is None
    assert has_where("SELECT * FROM t") is None


def test_mass_delete_unbounded_and_drop(conn):
    conn.execute("DELETE FROM patients WHERE id > 20")          # 130 rows: mass delete
    conn.execute("UPDATE patients SET name = 'x'")              # no WHERE
    conn.execute("DELETE FROM visits")                          # no WHERE, 0 rows
    conn.commit()
    conn.execute("DROP TABLE visits")
    f = conn.audit.suspicious(after_hours=False)
    by = {}
    for x in f:
        by.setdefault(x.kind, []).append(x)
    mass = by["mass_delete"][0]
    ev = conn.audit.query().operation("DELETE").first()
    assert mass.event_ids == (ev.id,) and mass.details["rows"] == 130
    assert mass.severity == "high"
    unb = {x.event_ids[0] for x in by["unbounded_write"]}
    upd = conn.audit.query().operation("UPDATE").first().id
    dele = conn.audit.query().operation("DELETE").all()[1].id
    assert unb == {upd, dele}
    drop = by["drop_table"][0]
    assert drop.target == "visits"
    assert drop.event_ids == (conn.audit.query().operation("DROP_TABLE").first().id,)
    # a higher threshold drops the mass delete; kinds= restricts the checks
    assert "mass_delete" not in kinds(conn.audit.suspicious(mass_delete_threshold=1000,
                                                            after_hours=False))
    assert kinds(conn.audit.suspicious(kinds=["drop_table"])) == {"drop_table"}
    with pytest.raises(heliosdb.ProgrammingError):
        conn.audit.suspicious(kinds=["nonsense"])


def test_many_small_deletes_add_up(conn):
    for i in range(1, 121):
        conn.execute("DELETE FROM patients WHERE id = ?", (i,))
    conn.commit()
    f = [x for x in conn.audit.suspicious(after_hours=False) if x.kind == "mass_delete"]
    assert len(f) == 1 and f[0].details["rows"] >= 100
    deletes = conn.audit.query().operation("DELETE").ids_only()
    assert set(f[0].event_ids) <= set(deletes) and len(f[0].event_ids) >= 100


def test_failure_and_denial_bursts(conn):
    for _ in range(6):
        with pytest.raises(heliosdb.OperationalError):
            conn.execute("SELECT * FROM nosuch")
    for _ in range(5):
        with pytest.raises(heliosdb.DatabaseError):
            conn.execute("DELETE FROM __audit_log")
    f = conn.audit.suspicious(after_hours=False)
    fails = [x for x in f if x.kind == "failure_burst"]
    denied = [x for x in f if x.kind == "denied_burst"]
    tamper = [x for x in f if x.kind == "audit_tamper"]
    failed_ids = conn.audit.query().success(False).operation("SELECT").ids_only()
    assert len(fails) == 1 and set(fails[0].event_ids) == set(failed_ids)
    denied_ids = conn.audit.query().success(False).operation("DELETE").ids_only()
    assert len(denied) == 1 and set(denied[0].event_ids) == set(denied_ids)
    assert {x.event_ids[0] for x in tamper} == set(denied_ids)
    assert all(x.severity == "high" for x in tamper)
    # below the threshold: nothing
    assert "failure_burst" not in kinds(conn.audit.suspicious(burst_threshold=7,
                                                              after_hours=False))


def test_bursts_need_the_window(conn):
    for k in range(4):
        stamp(conn, [EventFields("SELECT", target="x", user="eve", success=0, error="e")],
              MON_NOON_PARIS + k * 120_000_000)  # one every 2 minutes
    f = conn.audit.suspicious(after_hours=False, burst_threshold=3, burst_window=60)
    assert "failure_burst" not in kinds(f)
    f = conn.audit.suspicious(after_hours=False, burst_threshold=3, burst_window=600)
    b = [x for x in f if x.kind == "failure_burst"]
    assert len(b) == 1 and len(b[0].event_ids) == 4 and b[0].user == "eve"


def test_after_hours_with_time_zone(conn):
    stamp(conn, [EventFields("SELECT", target="patients", user="bob")], MON_NOON_PARIS)
    stamp(conn, [EventFields("UPDATE", target="patients", user="bob",
                             query="UPDATE patients SET name='y' WHERE id=3")],
          MON_2330_PARIS)
    stamp(conn, [EventFields("SELECT", target="patients", user="carol")], SAT_NOON)
    f = [x for x in conn.audit.suspicious(after_hours=PARIS, since=MON_NOON_PARIS)
         if x.kind == "after_hours"]
    ids = {e.user: e.id for e in conn.audit.query().since(MON_NOON_PARIS)}
    got = {(x.user, x.details["local_date"]): x.event_ids for x in f}
    assert got == {("bob", "2031-03-03"): (ids["bob"],), ("carol", "2031-03-08"):
                   (ids["carol"],)}
    # 22:30 UTC is not after hours in UTC with a 23:00 start, and weekends off
    f2 = conn.audit.suspicious(since=MON_NOON_PARIS, after_hours={
        "start": "23:00", "end": "06:00", "timezone": "UTC", "weekends": False})
    assert "after_hours" not in kinds(f2)
    with pytest.raises(heliosdb.ConfigError):
        conn.audit.suspicious(after_hours={"start": "20:00", "end": "07:00",
                                           "timezone": "Mars/Olympus"})


def test_after_hours_from_config(db_path):
    cfg = heliosdb.config.load_config({"extends": "verbose", "audit": {"after_hours": PARIS}})
    c = heliosdb.connect(db_path, config=cfg, audit_user="alice")
    stamp(c, [EventFields("SELECT", target="t", user="bob")], MON_2330_PARIS)
    f = [x for x in c.audit.suspicious(since=MON_NOON_PARIS) if x.kind == "after_hours"]
    assert f and f[0].details["timezone"] == "Europe/Paris"
    c.close()


def test_sensitive_reads(db_path):
    cfg = heliosdb.config.load_config({"extends": "verbose",
                                       "audit": {"sensitive_tables": ["patients"]}})
    c = heliosdb.connect(db_path, config=cfg, audit_user="alice")
    c.execute("CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT)")
    c.execute("CREATE TABLE other(x)")
    c.execute("SELECT name FROM patients").fetchall()
    c.execute("SELECT * FROM other").fetchall()
    c.execute("SELECT * FROM other JOIN patients").fetchall()
    f = [x for x in c.audit.suspicious(after_hours=False) if x.kind == "sensitive_read"]
    reads = c.audit.query().operation("SELECT").table("patients").ids_only()
    assert len(f) == 1 and set(f[0].event_ids) == set(reads) and len(reads) == 2
    # the parameter overrides the config
    f = c.audit.suspicious(after_hours=False, sensitive_tables=["other"])
    assert [x.target for x in f if x.kind == "sensitive_read"] == ["other"]
    c.close()


def test_timeline(conn):
    stamp(conn, [EventFields("LOGIN", user="bob", session_id="sb")], MON_NOON_PARIS)
    stamp(conn, [EventFields("UPDATE", target="patients", user="bob", session_id="sb",
                             affected_rows=1)], MON_NOON_PARIS + 1_000_000)
    stamp(conn, [EventFields("SELECT", target="visits", user="bob", session_id="sb")],
          MON_NOON_PARIS + 2_000_000)
    tl = conn.audit.timeline(user="bob")
    assert [e.operation for e in tl] == ["LOGIN", "UPDATE", "SELECT"]
    assert [e.operation for e in conn.audit.timeline(user="bob", table="patients")] == \
        ["UPDATE"]
    assert [e.operation for e in conn.audit.timeline(
        user="bob", since=MON_NOON_PARIS + 500_000)] == ["UPDATE", "SELECT"]
    assert len(conn.audit.timeline(table="patients")) >= 3  # CREATE, INSERT, UPDATE
    assert [e.user for e in conn.audit.timeline(session="sb")] == ["bob"] * 3
    ts = [e.ts_us for e in conn.audit.timeline()]
    assert ts == sorted(ts)


def test_findings_are_sorted_and_serialisable(conn):
    import json

    conn.execute("DELETE FROM patients")
    conn.commit()
    stamp(conn, [EventFields("SELECT", target="t", user="bob")], SAT_NOON)
    f = conn.audit.suspicious(after_hours=PARIS)
    sev = [x.severity for x in f]
    assert sev == sorted(sev, key=["high", "medium", "low"].index)
    d = json.loads(json.dumps([x.to_dict() for x in f]))
    assert all(x["event_ids"] for x in d)
