"""Audit config changes are audited (issue 5 item 3): a connection with audit enabled
compares the audit-relevant config with the one last recorded in ``__audit_meta`` and
appends AUDIT_CONFIG_CHANGE (with the changed keys) when it differs, or the first time."""
from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

import heliosdb


@pytest.fixture(autouse=True)
def initial_event(monkeypatch):
    """These tests expect the initial config as an event (issue 5); the product default
    is in AuditSession.record_initial_config (see test_initial_config_without_event)."""
    from heliosdb.audit.capture import AuditSession

    monkeypatch.setattr(AuditSession, "record_initial_config", True)


def config_events(path, table="__audit_log"):
    db = sqlite3.connect(path)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            f"SELECT * FROM {table} WHERE operation = 'AUDIT_CONFIG_CHANGE' ORDER BY id")]
    finally:
        db.close()


def details(ev):
    return json.loads(ev["metadata"])["details"]


def meta(path, key, table="__audit_log"):
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM __audit_meta WHERE tbl = ? AND key = ?",
                         (table, key)).fetchone()
        return row and row[0]
    finally:
        db.close()


def touch(path, config, **kw):
    conn = heliosdb.connect(path, config=config, **kw)
    conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    return conn


def test_first_connection_records_the_initial_config(tmp_path):
    p = str(tmp_path / "a.db")
    touch(p, "default", audit_user="alice").close()
    evs = config_events(p)
    assert len(evs) == 1
    ev = evs[0]
    assert ev["success"] == 1 and ev["user"] == "alice" and ev["target"] == "__audit_log"
    d = details(ev)
    from heliosdb.config import load_config

    cfg = load_config("default")
    assert d["preset"] == "default" and d["initial"] is True and d["previous_hash"] is None
    assert d["config"]["audit"]["log_dml"] is True
    assert d["hash"] == meta(p, "config_hash")
    assert json.loads(meta(p, "config")) == d["config"]
    assert d["config"]["audit"] == cfg.to_dict()["audit"]
    assert heliosdb.audit.verify(p).ok


def test_same_config_twice_gives_one_event(tmp_path):
    p = str(tmp_path / "a.db")
    for _ in range(3):
        touch(p, "default").close()
    assert len(config_events(p)) == 1
    assert heliosdb.audit.verify(p).ok


def test_changed_preset_records_changed_keys(tmp_path):
    p = str(tmp_path / "a.db")
    touch(p, "default").close()
    h1 = meta(p, "config_hash")
    touch(p, "verbose", audit_user="bob").close()
    touch(p, "verbose").close()
    evs = config_events(p)
    assert len(evs) == 2
    d = details(evs[1])
    assert evs[1]["user"] == "bob"
    assert d["preset"] == "verbose" and d["previous_preset"] == "default"
    assert d["previous_hash"] == h1 and d["hash"] == meta(p, "config_hash") != h1
    assert "initial" not in d and "config" not in d
    changed = d["changed"]
    assert changed["name"] == {"old": "default", "new": "verbose"}
    verbose = heliosdb.connect(":memory:", config="verbose").audit._config.to_dict()["audit"]
    default = heliosdb.connect(":memory:", config="default").audit._config.to_dict()["audit"]
    expect = {f"audit.{k}" for k in default if default[k] != verbose[k]
              and not isinstance(default[k], dict)}
    assert expect and expect <= set(changed)
    for k in expect:
        name = k.split(".", 1)[1]
        assert changed[k] == {"old": default[name], "new": verbose[name]}
    assert all(k == "name" or k.startswith(("audit.", "encryption.")) for k in changed)
    assert heliosdb.audit.verify(p).ok


def test_single_key_change_and_back(tmp_path):
    """Relaxing a key (a shorter max_query_length) through connect() is not a change: the
    stored policy wins. The explicit, audited change_policy() relaxes it; tightening it
    again through connect() is recorded as usual."""
    p = str(tmp_path / "a.db")
    shorter = {"extends": "default", "audit": {"max_query_length": 500}}
    touch(p, "default").close()
    conn = touch(p, shorter)
    assert conn.config.audit.max_query_length == 10000  # enforced from the database
    conn.audit.change_policy(shorter, reason="queries are cut at 500 characters")
    assert conn.config.audit.max_query_length == 500
    conn.close()
    touch(p, shorter).close()  # now the stored policy: nothing to record
    touch(p, "default").close()
    evs = config_events(p)
    explicit = [e for e in evs if details(e).get("explicit")]
    assert len(explicit) == 1
    d = details(explicit[0])
    assert d["changed"]["audit.max_query_length"] == {"old": 10000, "new": 500}
    assert d["relaxed"] == ["audit.max_query_length"]
    assert d["reason"] == "queries are cut at 500 characters"
    assert details(evs[-1])["changed"]["audit.max_query_length"] == {"old": 500, "new": 10000}
    assert heliosdb.audit.verify(p).ok


def test_connect_time_writes_do_not_disturb_dbapi_counters(tmp_path):
    p = str(tmp_path / "a.db")
    touch(p, "default").close()
    conn = heliosdb.connect(p, config="verbose")  # records a change at connect
    assert conn.total_changes == 0
    cur = conn.execute("INSERT INTO t VALUES (2)")
    assert cur.lastrowid == 2 and conn.total_changes == 1
    conn.commit()
    conn.close()
    assert len(config_events(p)) == 2


def test_other_audit_tables_keep_their_own_config(tmp_path):
    """Another table_name through connect() is enforced back to the stored log; moving the
    log is the explicit change_policy(), recorded in the old log; each log keeps its own
    config."""
    p = str(tmp_path / "a.db")
    other = {"extends": "default", "audit": {"table_name": "other_log"}}
    touch(p, "default").close()
    conn = touch(p, other)
    assert conn.audit.table == "__audit_log"
    conn.audit.change_policy(other, reason="log moved")
    assert conn.audit.table == "other_log"
    conn.close()
    evs = config_events(p)
    assert details(evs[-1])["relaxed"] == ["audit.table_name"]
    assert [e for e in evs if details(e).get("explicit")] == evs[-1:]
    assert len(config_events(p, "other_log")) == 1
    assert heliosdb.connect(p).audit.table == "other_log"


def _connect_many(path, n):
    for _ in range(n):
        heliosdb.connect(path, config="verbose", timeout=30).close()


def test_concurrent_connects_record_a_change_once(tmp_path):
    p = str(tmp_path / "a.db")
    touch(p, "default").close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_connect_many, args=(p, 5)) for _ in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    assert len(config_events(p)) == 2
    assert heliosdb.audit.verify(p).ok


def test_recorded_whatever_the_preset_logs(tmp_path):
    p = str(tmp_path / "a.db")
    touch(p, "minimal").close()  # logs DDL only: the config event all the same
    touch(p, "minimal").close()
    assert len(config_events(p)) == 1


def test_encrypted_database_and_no_secrets(tmp_path):
    from heliosdb import native

    if not native.available():
        pytest.skip("native extension not built")
    key = bytes(range(32))
    p = str(tmp_path / "a.db")
    touch(p, "compliance", key=key).close()
    touch(p, "compliance", key=key).close()
    conn = heliosdb.connect(p, config="compliance", key=key)
    rows = conn.execute("SELECT * FROM __audit_log WHERE operation = 'AUDIT_CONFIG_CHANGE'"
                        ).fetchall()
    text = repr(conn.execute("SELECT * FROM __audit_meta").fetchall()) + repr(rows)
    conn.close()
    assert len(rows) == 1 and key.hex() not in text
    assert heliosdb.audit.verify(p, key=key).ok


def test_initial_config_without_event(tmp_path, monkeypatch):
    """record_initial_config off: the first config is only stored in __audit_meta, and
    the first change is an event naming the changed keys all the same."""
    from heliosdb.audit.capture import AuditSession

    monkeypatch.setattr(AuditSession, "record_initial_config", False)
    p = str(tmp_path / "a.db")
    touch(p, "default").close()
    touch(p, "default").close()
    assert config_events(p) == [] and meta(p, "config_hash")
    assert json.loads(meta(p, "config"))["name"] == "default"
    touch(p, "verbose").close()
    evs = config_events(p)
    assert len(evs) == 1 and details(evs[0])["changed"]["name"] == {"old": "default",
                                                                    "new": "verbose"}
    assert heliosdb.audit.verify(p).ok
