"""Issue 15: an audited database stays audited; every write path of an audited connection
is recorded or refused. Each test is one attack found against 0eee903, tried as an
attacker would, and fails if the attack gets through.

The variants that matter for stored rows (plain and encrypted files, rollback journal and
WAL, another audit table name, the C and the pure chain) run through the ``audited``
fixture.
"""
from __future__ import annotations

import gc
import json
import sqlite3
import threading

import apsw
import pytest

import heliosdb
from heliosdb.errors import AuditPolicyError, DatabaseError

from helpers.apsw_leak import BEGIN_LEAK
from helpers.threads import run_threads

KEY = bytes(range(32))


def _events(path, table="__audit_log", key=None):
    """Every stored event as a dict, read around heliosdb's connection (read-only, raw)."""
    from heliosdb.crypto import open_connection

    db = open_connection(path, flags=apsw.SQLITE_OPEN_READONLY, uri=False, key=key,
                         encryption=None)
    try:
        cur = db.cursor()
        cur.execute(f"SELECT * FROM {table} ORDER BY id")
        names = [d[0] for d in cur.getdescription()]
        return [dict(zip(names, r)) for r in cur]
    finally:
        db.close()


def _details(ev):
    return (json.loads(ev["metadata"]) if ev["metadata"] else {}).get("details") or {}


def _new_db(path, *statements, config="default"):
    """An open connection to a new database at ``path`` (audited under ``config``; None:
    not configured) after ``statements``, committed."""
    conn = heliosdb.connect(path, config=config)
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    return conn


def _behind_heliosdb(path, *statements):
    """Run ``statements`` on the file with stdlib sqlite3, as someone with write access to
    it would: heliosdb sees none of it."""
    raw = sqlite3.connect(path)
    for sql in statements:
        raw.execute(sql)
    raw.commit()
    raw.close()


class Audited:
    """A database under a given variant: how to open it, and where its log is."""

    def __init__(self, path, key, journal, table):
        self.path, self.key, self.journal, self.table = path, key, journal, table
        audit = {"table_name": table} if table != "__audit_log" else {}
        self.config = {"extends": "default", "audit": audit}

    def connect(self, **kw):
        kw.setdefault("config", self.config)
        if self.key is not None:
            kw.setdefault("key", self.key)
        return heliosdb.connect(self.path, **kw)

    def bare(self, **kw):
        """heliosdb.connect with no config at all (the attacker's first try)."""
        if self.key is not None:
            kw.setdefault("key", self.key)
        return heliosdb.connect(self.path, **kw)

    def events(self):
        return _events(self.path, self.table, self.key)

    def verify(self):
        conn = self.bare()
        try:
            return conn.audit.verify()
        finally:
            conn.close()


@pytest.fixture(params=[("plain", "delete", "__audit_log"), ("plain", "wal", "__audit_log"),
                        ("encrypted", "wal", "__audit_log"),
                        ("plain", "delete", "phi_log"), ("encrypted", "delete", "phi_log")],
                ids=lambda p: "-".join(p))
def audited(request, tmp_path):
    enc, journal, table = request.param
    db = Audited(str(tmp_path / "a.db"), KEY if enc == "encrypted" else None, journal, table)
    conn = db.connect()
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT, dx TEXT, scan BLOB)")
    conn.execute("INSERT INTO patients VALUES (1, 'Ada', 'healthy', zeroblob(16))")
    conn.commit()
    conn.close()
    return db


# --- 1. an audited database stays audited ---------------------------------------------------

def test_connect_without_config_is_audited_with_the_stored_policy(audited):
    before = len(audited.events())
    conn = audited.bare()
    assert conn.audit is not None and conn.audit.table == audited.table
    conn.execute("UPDATE patients SET dx = 'FALSIFIED' WHERE id = 1")
    conn.commit()
    with pytest.raises(DatabaseError, match="append-only"):
        conn.execute(f"DELETE FROM {audited.table} WHERE id > 0")
    conn.close()
    evs = audited.events()[before:]
    first = evs[0]
    assert first["operation"] == "LOGIN"
    assert _details(first)["policy"] == "enforced from the database"
    assert [e["operation"] for e in evs if e["success"]].count("UPDATE") == 1
    assert any(e["operation"] == "DELETE" and not e["success"] for e in evs)
    assert audited.verify().ok


def test_config_with_audit_off_or_relaxed_is_raised_to_the_stored_policy(audited):
    for cfg in ({"audit": {"enabled": False}}, {"extends": "default",
                                                "audit": {"log_dml": False}}, "minimal"):
        conn = audited.connect(config=cfg)
        assert conn.audit is not None and conn.config.audit.log_dml
        conn.execute("INSERT INTO patients(name) VALUES ('Eve')")
        conn.commit()
        conn.close()
    inserts = [e for e in audited.events() if e["operation"] == "INSERT"]
    assert len(inserts) == 1 + 3


def test_other_table_name_cannot_delete_the_log(audited):
    other = "x_log" if audited.table != "x_log" else "y_log"
    conn = audited.connect(config={"extends": "default", "audit": {"table_name": other}})
    assert conn.audit.table == audited.table  # the stored log, not a fresh one
    for table in (audited.table, "__audit_meta"):
        with pytest.raises(DatabaseError, match="append-only"):
            conn.execute(f"DELETE FROM {table}")
    conn.close()
    assert audited.verify().ok


def test_relaxing_is_explicit_and_audited(audited):
    conn = audited.connect()
    with pytest.raises(heliosdb.ProgrammingError, match="reason"):
        conn.audit.change_policy("minimal", reason="")
    conn.audit.change_policy({"extends": "default", "audit": {"log_dml": False,
                                                               "table_name": audited.table}},
                             reason="ticket 42")
    conn.close()
    change = [e for e in audited.events() if e["operation"] == "AUDIT_CONFIG_CHANGE"][-1]
    d = _details(change)
    assert d["explicit"] and d["reason"] == "ticket 42" and d["relaxed"] == ["audit.log_dml"]
    conn = audited.bare()
    conn.execute("INSERT INTO patients(name) VALUES ('quiet')")
    conn.commit()
    conn.close()
    assert not any(e["operation"] == "INSERT" and e["session_id"] != change["session_id"]
                   and "quiet" in (e["query"] or "") for e in audited.events())


def test_switching_audit_off_keeps_the_log_protected(audited):
    conn = audited.connect()
    conn.audit.change_policy({"audit": {"enabled": False}}, reason="decommissioned")
    assert conn.audit is None
    with pytest.raises(DatabaseError):
        conn.execute(f"DELETE FROM {audited.table}")
    conn.close()
    conn = audited.bare()
    assert conn.audit is None
    with pytest.raises(DatabaseError):
        conn.execute(f"UPDATE {audited.table} SET user = 'x'")
    with pytest.raises(AuditPolicyError):
        conn.blobopen(audited.table, "checksum", 1)
    with pytest.raises(AuditPolicyError):
        conn.deserialize(b"")
    conn.close()
    last = audited.events()[-1]
    assert last["operation"] == "AUDIT_CONFIG_CHANGE" and _details(last)["relaxed"] == \
        ["audit.enabled"]
    assert heliosdb.audit.verify(audited.path, key=audited.key, table=audited.table).ok


def test_mandatory_checksums_cannot_be_relaxed(tmp_path):
    p = str(tmp_path / "h.db")
    conn = heliosdb.connect(p, config="hipaa", key=KEY)
    for cfg in ("default", {"audit": {"enabled": False}}):
        with pytest.raises(heliosdb.ProgrammingError, match="mandatory checksums"):
            conn.audit.change_policy(cfg, reason="cost")
    conn.close()
    conn = heliosdb.connect(p, key=KEY, config="minimal")
    assert conn.config.audit.checksums_mandatory and conn.config.audit.log_select
    conn.close()


def test_defensive_mode_is_on_and_writable_schema_refused(audited):
    conn = audited.bare()
    assert conn._apsw.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    with pytest.raises(DatabaseError):
        conn.execute("PRAGMA writable_schema = 1")
    conn.close()


# --- 2. every write path recorded or refused -------------------------------------------------

def test_backup_into_an_audited_database_is_refused(audited):
    conn = audited.connect()
    mem = heliosdb.connect(":memory:")
    if audited.key is None:
        conn.backup(mem)
        mem.execute("UPDATE patients SET dx = 'FALSIFIED'")
        mem.commit()
        with pytest.raises(AuditPolicyError, match="restore=True"):
            mem.backup(conn)
    empty = heliosdb.connect(":memory:")  # a source without any log
    with pytest.raises(AuditPolicyError):
        empty.backup(conn)
    assert conn.execute("SELECT dx FROM patients").fetchone() == ("healthy",)
    conn.close()
    assert audited.verify().ok


def test_explicit_restore_is_recorded_naming_the_previous_head(tmp_path):
    p = str(tmp_path / "r.db")
    conn = _new_db(p, "CREATE TABLE t(x)", "INSERT INTO t VALUES (1)")
    head = conn.audit.head()
    empty = _new_db(":memory:", "CREATE TABLE t(x)", "INSERT INTO t VALUES ('restored')",
                    config=None)
    empty.backup(conn, restore=True)
    assert conn.execute("SELECT x FROM t").fetchall() == [("restored",)]
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert conn.audit.verify().ok
    conn.close()
    evs = _events(p)
    restore = [e for e in evs if e["operation"] == "RESTORE"]
    assert len(restore) == 1
    d = _details(restore[0])
    assert d["previous_head"] == {"id": head.last_id, "checksum": head.last_checksum.hex()}
    assert any(e["operation"] == "INSERT" and e["id"] > restore[0]["id"] for e in evs)


def test_blob_writes_are_events_and_refused_on_the_log(audited):
    conn = audited.connect()
    n0 = len([e for e in audited.events() if e["operation"] == "UPDATE"])
    with conn.blobopen("patients", "scan", 1) as blob:
        blob.write(b"abcd")
        blob[5] = 1
    assert conn.execute("SELECT substr(scan, 1, 4) FROM patients").fetchone() == (b"abcd",)
    for table, column in ((audited.table, "checksum"), (audited.table, "query"),
                          ("__audit_meta", "value"), ("sqlite_master", "sql")):
        with pytest.raises(AuditPolicyError):
            conn.blobopen(table, column, 1)
    # in an open transaction that rolls back: the writes and their events go together
    conn.execute("INSERT INTO patients(name, scan) VALUES ('Bob', zeroblob(4))")
    with conn.blobopen("patients", "scan", 2) as blob:
        blob.write(b"zz")
    conn.rollback()
    conn.close()
    updates = [e for e in audited.events() if e["operation"] == "UPDATE"]
    committed = [e for e in updates[n0:] if e["success"]]
    assert len(committed) == 2
    assert all(_details(e)["blob"]["rowid"] == 1 for e in committed)
    assert [e for e in updates[n0:] if not e["success"]]  # the rolled-back write, recorded
    assert audited.verify().ok


def test_serialize_and_blob_reads_are_recorded_when_reads_are_logged(tmp_path):
    p = str(tmp_path / "v.db")
    conn = _new_db(p, "CREATE TABLE t(b BLOB)", "INSERT INTO t VALUES (x'0102')",
                   config="verbose")
    conn.serialize()
    with conn.blobopen("t", "b", 1, readonly=True) as blob:
        blob.read()
    mem = heliosdb.connect(":memory:")
    conn.backup(mem)
    conn.close()
    queries = [e["query"] for e in _events(p) if e["operation"] == "SELECT"]
    assert "serialize('main')" in queries
    assert "blob read: t.b rowid 1" in queries
    assert any(q and q.startswith("backup('main')") for q in queries)


def test_deserialize_is_refused(audited):
    conn = audited.connect()
    data = conn.serialize()
    with pytest.raises(AuditPolicyError, match="deserialize"):
        conn.deserialize(data)
    conn.close()


def test_vacuum_trusts_only_its_own_copy(tmp_path):
    p = str(tmp_path / "v.db")
    conn = _new_db(p, "CREATE TABLE t(x)", "INSERT INTO t VALUES (1)")
    n = len(_events(p))

    def target():
        conn.execute("DELETE FROM __audit_log")  # run by VACUUM INTO f()
        return str(tmp_path / "copy.db")

    conn.create_function("f", 0, target)
    with pytest.raises(DatabaseError):
        conn.execute("VACUUM INTO f()")
    if conn.in_transaction:  # the DB-API's implicit BEGIN for the DELETE inside f()
        conn.rollback()
    assert not (tmp_path / "copy.db").exists()
    conn.execute("VACUUM")  # VACUUM itself still works, the log included
    conn.close()
    assert len(_events(p)) >= n
    assert heliosdb.audit.verify(p).ok


@BEGIN_LEAK
def test_denied_attempts_survive_a_connection_dropped_without_close(audited):
    conn = audited.connect()
    conn.execute("INSERT INTO patients(name) VALUES ('pending')")
    with pytest.raises(DatabaseError):
        conn.execute(f"DELETE FROM {audited.table}")
    del conn
    gc.collect()
    evs = audited.events()
    denied = [e for e in evs if e["operation"] == "DELETE" and not e["success"]]
    assert denied and "append-only" in denied[-1]["error"]
    assert audited.verify().ok


def test_two_threads_on_one_connection_lose_nothing(tmp_path):
    p = str(tmp_path / "t.db")
    conn = heliosdb.connect(p, config="default", check_same_thread=False)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    per_thread, denied = 300, []

    def writer(k):
        for i in range(per_thread):
            conn.execute("INSERT INTO t VALUES (?)", (f"{k}-{i}",))
            if i % 50 == 0:
                conn.commit()
            if i % 30 == 0:
                try:
                    conn.execute("UPDATE __audit_log SET user = 'mallory'")
                except DatabaseError:
                    denied.append(1)
        conn.commit()

    errors = run_threads(writer, [(k,) for k in range(3)])
    assert not errors, errors
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3 * per_thread,)
    conn.close()
    evs = _events(p)
    assert len([e for e in evs if e["operation"] == "INSERT" and e["success"]]) == \
        3 * per_thread
    assert not [e for e in evs if e["user"] == "mallory"]
    assert len(denied) == 3 * 10
    assert len([e for e in evs if e["operation"] == "UPDATE" and not e["success"]]) == \
        len(denied)
    assert heliosdb.audit.verify(p).ok


# --- 3. the log's neighbourhood -------------------------------------------------------------

def test_foreign_trigger_on_the_log_is_refused_until_dropped(tmp_path):
    p = str(tmp_path / "f.db")
    _new_db(p, "CREATE TABLE t(x)").close()
    _behind_heliosdb(p, "CREATE TRIGGER drop_events BEFORE INSERT ON __audit_log "
                        "WHEN new.operation = 'DELETE' BEGIN SELECT RAISE(IGNORE); END",
                     "CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN "
                     "DELETE FROM __audit_log WHERE id = 1; END")
    conn = heliosdb.connect(p)
    with pytest.raises(DatabaseError, match="not created by heliosdb"):
        conn.execute("DELETE FROM t")
    with pytest.raises(DatabaseError, match="not created by heliosdb"):
        conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("DROP TRIGGER drop_events")
    conn.execute("DROP TRIGGER sneaky")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("DELETE FROM t")
    conn.commit()
    conn.close()
    ops = [(e["operation"], e["target"], e["success"]) for e in _events(p)]
    assert ("DROP_TRIGGER", "__audit_log", 1) in ops
    assert ("DELETE", "t", 1) in ops
    assert heliosdb.audit.verify(p).ok


def test_trigger_planted_while_connected_fails_the_append_loudly(tmp_path):
    p = str(tmp_path / "g.db")
    conn = _new_db(p, "CREATE TABLE t(x)")
    _behind_heliosdb(p, "CREATE TRIGGER eat BEFORE INSERT ON __audit_log BEGIN "
                        "SELECT RAISE(IGNORE); END")
    with pytest.raises(heliosdb.AuditIntegrityError, match="trigger"):
        conn.execute("INSERT INTO t VALUES ('unrecorded?')")
        conn.commit()
    conn.rollback()
    with pytest.raises(DatabaseError, match="not created by heliosdb"):
        conn.execute("SELECT count(*) FROM t")
    conn.execute("DROP TRIGGER eat")  # the one statement allowed: recorded
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
    ops = [(e["operation"], e["success"]) for e in _events(p)]
    assert ("DROP_TRIGGER", 1) in ops and ("INSERT", 0) in ops
    assert heliosdb.audit.verify(p).ok


# --- a property: several threads, random statements, one event each ------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_STEPS = st.sampled_from(["insert", "update", "delete", "syntax", "attack", "commit"])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(programs=st.lists(st.lists(_STEPS, min_size=1, max_size=30), min_size=2, max_size=3))
def test_threads_random_statements_one_event_each(tmp_path_factory, programs):
    p = str(tmp_path_factory.mktemp("prop") / "p.db")
    conn = heliosdb.connect(p, config="default", check_same_thread=False)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    conn.commit()
    base = len(_events(p))
    ok_count = {"INSERT": 0, "UPDATE": 0, "DELETE": 0}
    failed = []
    lock = threading.Lock()

    def run(program, k):
        for i, step in enumerate(program):
            sql, params, op = {
                "insert": ("INSERT INTO t(x) VALUES (?)", (f"{k}-{i}",), "INSERT"),
                "update": ("UPDATE t SET x = x || '+' WHERE id % 3 = ?", (i % 3,),
                           "UPDATE"),
                "delete": ("DELETE FROM t WHERE id % 7 = ?", (i % 7,), "DELETE"),
                "syntax": ("UPDAT t SET x = 1", (), None),
                "attack": ("DELETE FROM __audit_log WHERE id > ?", (0,), None),
                "commit": (None, None, None),
            }[step]
            if sql is None:
                conn.commit()
                continue
            try:
                conn.execute(sql, params)
            except DatabaseError:
                with lock:
                    failed.append(step)
                continue
            with lock:
                ok_count[op] += 1
        conn.commit()

    errors = run_threads(run, [(prog, k) for k, prog in enumerate(programs)])
    conn.close()
    assert not errors, errors
    evs = _events(p)[base:]
    for op, n in ok_count.items():
        assert len([e for e in evs if e["operation"] == op and e["success"]]) == n, op
    assert len([e for e in evs if not e["success"]]) == len(failed)
    assert heliosdb.audit.verify(p).ok


def test_a_dropped_log_is_never_replaced_by_a_fresh_one(tmp_path):
    """The writable_schema attack done around heliosdb (stdlib sqlite3): the next
    connection refuses to start a new, empty chain in place of the dropped log."""
    p = str(tmp_path / "d.db")
    _new_db(p, "CREATE TABLE t(x)").close()
    _behind_heliosdb(p, "PRAGMA writable_schema = 1",
                     "DELETE FROM sqlite_master WHERE tbl_name = '__audit_log'")
    for cfg in (None, "default"):
        with pytest.raises(heliosdb.AuditIntegrityError, match="missing"):
            heliosdb.connect(p, config=cfg)


# --- issue 16 item 3: the actor per request ---------------------------------------------------

def test_acting_as_sets_user_reason_and_context_per_thread_and_nests(tmp_path):
    p = str(tmp_path / "actors.db")
    conn = heliosdb.connect(p, config="default", audit_user="svc", check_same_thread=False,
                            audit_context={"client_ip": "10.0.0.1"})
    conn.execute("CREATE TABLE t(who, x)")
    conn.commit()
    barrier = threading.Barrier(2)

    def request(name, n):
        with conn.audit.acting_as(name, reason=f"ticket-{name}", client_ip=f"ip-{name}"):
            barrier.wait()
            for i in range(n):
                conn.execute("INSERT INTO t VALUES (?, ?)", (name, i))
                if i == 2:
                    with conn.audit.acting_as(name + "-delegate"):
                        conn.execute("INSERT INTO t VALUES (?, ?)", (name + "-d", i))
            conn.commit()

    errors = run_threads(request, [(n, 20) for n in ("bob", "carol")])
    conn.execute("INSERT INTO t VALUES ('svc', 0)")
    conn.commit()
    conn.close()
    assert not errors, errors
    evs = _events(p)
    inserts = [e for e in evs if e["operation"] == "INSERT"]
    by_user = {}
    for e in inserts:
        by_user.setdefault(e["user"], []).append(e)
    assert len(by_user["bob"]) == 20 and len(by_user["carol"]) == 20
    assert len(by_user["bob-delegate"]) == 1 and len(by_user["svc"]) == 1
    for name in ("bob", "carol"):
        for e in by_user[name] + by_user[name + "-delegate"]:
            assert e["reason"] == f"ticket-{name}"  # inherited by the nested frame
            assert json.loads(e["metadata"])["client_ip"] == f"ip-{name}"
    assert json.loads(by_user["svc"][0]["metadata"])["client_ip"] == "10.0.0.1"
    assert by_user["svc"][0]["reason"] is None
    changes = [e for e in evs if e["operation"] == "ACTOR_CHANGE"]
    assert {(_details(e)["actor"], _details(e)["vouched_by"]) for e in changes} == {
        ("bob", "svc"), ("carol", "svc"), ("bob-delegate", "bob"),
        ("carol-delegate", "carol")}
    assert heliosdb.audit.verify(p).ok


def test_set_user_and_application_events_with_an_error(tmp_path):
    p = str(tmp_path / "u.db")
    conn = heliosdb.connect(p, config="default", audit_user="pool")
    conn.audit.set_user("dave")
    conn.audit.log("LOGIN", success=False, error="Invalid credentials")
    conn.close()
    evs = _events(p)
    change = [e for e in evs if e["operation"] == "ACTOR_CHANGE"][0]
    assert change["user"] == "pool" and _details(change)["actor"] == "dave"
    failed = [e for e in evs if e["operation"] == "LOGIN" and not e["success"]][0]
    assert failed["user"] == "dave" and failed["error"] == "Invalid credentials"


# --- issue 16 item 4: reasons are enforced -----------------------------------------------------

def test_require_reason_refuses_and_records_changes_without_one(tmp_path):
    p = str(tmp_path / "fda.db")
    conn = heliosdb.connect(p, config="fda-part11", audit_user="qa")
    assert conn.config.audit.require_reason
    with pytest.raises(heliosdb.ReasonRequiredError):
        conn.execute("CREATE TABLE batch(id INTEGER PRIMARY KEY, v)")
    conn.audit.set_context(reason="create the batch record table")
    conn.execute("CREATE TABLE batch(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO batch(v) VALUES (1)")  # prepared (and cached) with a reason
    conn.commit()
    conn.audit.set_context(reason=None)
    for sql in ("INSERT INTO batch(v) VALUES (1)", "UPDATE batch SET v = 2",
                "WITH x AS (SELECT 1) DELETE FROM batch", "DROP TABLE batch"):
        with pytest.raises(heliosdb.ReasonRequiredError, match="reason"):
            conn.execute(sql)
    conn.execute("SELECT * FROM batch").fetchall()  # reads need no reason
    with conn.audit.acting_as("reviewer", reason="correct entry 1"):
        conn.execute("UPDATE batch SET v = 3 WHERE id = 1")
    conn.commit()
    assert conn.execute("SELECT v FROM batch").fetchall() == [(3,)]
    conn.close()
    evs = _events(p)
    denied = [e for e in evs if not e["success"] and "reason is required" in (e["error"] or "")]
    assert len(denied) == 5
    assert all(e["reason"] for e in evs if e["success"]
               and e["operation"] in ("CREATE_TABLE", "INSERT", "UPDATE", "DELETE"))


def test_report_flags_changes_without_reason(tmp_path):
    p = str(tmp_path / "fda2.db")
    conn = heliosdb.connect(p, config="default")  # written before the policy asked for reasons
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.audit.change_policy("fda-part11", reason="now under Part 11")
    found = [f for f in conn.audit.suspicious() if f.kind == "change_without_reason"]
    assert found and found[0].severity == "high" and found[0].details["count"] == 2
    data = conn.audit.report(str(tmp_path / "r.html"), preset="fda-part11")
    assert any(f["kind"] == "change_without_reason" for f in data["findings"])
    conn.close()
