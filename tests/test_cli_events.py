"""Issue 19: the subcommands that write audit events say who and why (``--actor``,
``--reason``), and ``heliosdb purge`` runs ``conn.audit.purge`` with its exit statuses.
"""
from __future__ import annotations

import json
import time

import pytest

import heliosdb
import heliosdb.config
from heliosdb.cli.common import EXIT_FAILED, EXIT_OK
from helpers.cli import assert_one_line_error, run_cli

KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
DAY_US = 86_400 * 1_000_000


def _log(path, key=None) -> list[dict]:
    """Every event of the log, as heliosdb audit --json prints them (read-only open)."""
    from heliosdb.cli.common import event_to_dict, readonly_uri

    conn = heliosdb.connect(readonly_uri(str(path)), uri=True, key=key)
    try:
        from heliosdb.audit.verify import verify_connection  # noqa: F401 - audit present

        rows = conn._apsw.execute("SELECT id, user, operation, reason, success "
                                  "FROM __audit_log ORDER BY id").fetchall()
    finally:
        conn.close()
    return [dict(zip(("id", "user", "operation", "reason", "success"), r)) for r in rows]


@pytest.fixture
def shop(tmp_path):
    if not heliosdb.native_available():
        pytest.skip("the encryption extension is not built here")
    (tmp_path / "k.key").write_bytes(KEY)
    (tmp_path / "new.key").write_bytes(NEW_KEY)
    path = tmp_path / "shop.db"
    conn = heliosdb.connect(str(path), key=KEY, config="default", isolation_level=None)
    conn.execute("CREATE TABLE orders(total REAL)")
    conn.execute("INSERT INTO orders VALUES (9.5)")
    conn.close()
    return path


@pytest.mark.parametrize("command, extra, operation", [
    ("rekey", ["--key-file", "k.key"], "KEY_ROTATION"),
    ("passwd", ["--key-file", "k.key", "--new-key-file", "new.key"], "KEY_CHANGE"),
])
def test_key_operations_record_actor_and_reason(tmp_path, shop, command, extra, operation):
    before = {e["id"] for e in _log(shop, KEY)}
    proc = run_cli([command, "shop.db", *extra, "--actor", "ops-oncall",
                    "--reason", "ticket SEC-42"], cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    key = NEW_KEY if command == "passwd" else KEY
    new = [e for e in _log(shop, key) if e["id"] not in before]
    mine = [e for e in new if e["reason"] == "ticket SEC-42"]
    assert mine, new
    assert all(e["user"] == "ops-oncall" and e["success"] == 1 for e in mine)
    assert [e["operation"] for e in mine] == [operation]


def test_help_of_event_writing_commands_lists_actor(tmp_path):
    for command in ("encrypt", "decrypt", "rekey", "passwd"):
        out = run_cli([command, "--help"], cwd=tmp_path).stdout
        assert "--actor" in out and "--reason" in out, command
    for command in ("audit", "export", "report", "purge"):
        out = run_cli([command, "--help"], cwd=tmp_path).stdout
        assert "--actor" in out, command


@pytest.fixture
def expiring(tmp_path):
    """An audited database whose first three events are 100 days old (the default preset
    keeps 90 days), made without LOGIN events so that they lead the chain."""
    from heliosdb.audit import store
    from heliosdb.audit.events import EventFields

    path = tmp_path / "r.db"
    cfg = heliosdb.config.load_config({"extends": "default", "audit": {"log_auth": False}})
    conn = heliosdb.connect(str(path), config=cfg, audit_user="alice", isolation_level=None)
    s = conn.audit
    with s._internal():
        store.append(s._db, s.table,
                     [EventFields("INSERT", target="t", user="alice", affected_rows=1)] * 3,
                     now_us=int(time.time() * 1e6) - 100 * DAY_US)
    conn.execute("CREATE TABLE t(a)")
    conn.close()
    return path


def test_purge_dry_run_then_purge(tmp_path, expiring):
    before = _log(expiring)
    proc = run_cli(["purge", "r.db", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.strip() == "would purge 3 event(s) (ids 1..3); nothing was changed"
    after = _log(expiring)
    assert after[:len(before)] == before  # (the dry run's own session adds its LOGIN)
    assert "RETENTION_PURGE" not in {e["operation"] for e in after}
    proc = run_cli(["purge", "r.db", "--archive", "arch", "--actor", "records-officer",
                    "--json"], cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["purged"], result["first_id"], result["last_id"]) == (3, 1, 3)
    assert (tmp_path / "arch" / result["archive"].split("/")[-1]).exists()
    after = _log(expiring)
    assert [e["id"] for e in after if e["id"] <= 3] == []
    purge_events = [e for e in after if e["operation"] == "RETENTION_PURGE"]
    assert [e["user"] for e in purge_events] == ["records-officer"]
    proc = run_cli(["verify", "r.db"], cwd=tmp_path)
    assert proc.returncode == EXIT_OK and "OK" in proc.stdout, proc.stderr
    proc = run_cli(["purge", "r.db"], cwd=tmp_path)
    assert proc.returncode == EXIT_OK
    assert proc.stdout.startswith("nothing to purge")


def test_purge_blocked_by_legal_hold_exits_1(tmp_path, expiring):
    conn = heliosdb.connect(str(expiring), config="default", isolation_level=None)
    conn.audit.hold("litigation 2026-17")
    conn.close()
    proc = run_cli(["purge", "r.db"], cwd=tmp_path)
    line = assert_one_line_error(proc, EXIT_FAILED, "r.db", "legal hold")
    assert "litigation 2026-17" in line
    assert [e["id"] for e in _log(expiring) if e["id"] <= 3] == [1, 2, 3]
    # A dry run still says what would go.
    proc = run_cli(["purge", "r.db", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == EXIT_OK and "would purge 3" in proc.stdout


def test_purge_read_only_and_without_log_are_input_errors(tmp_path, expiring):
    proc = run_cli(["purge", "file:r.db?mode=ro"], cwd=tmp_path)
    assert_one_line_error(proc, 2, "r.db", "read-only")
    import sqlite3

    with sqlite3.connect(tmp_path / "plain.db") as c:
        c.execute("CREATE TABLE t(a)")
    c.close()
    assert_one_line_error(run_cli(["purge", "plain.db"], cwd=tmp_path), 2, "plain.db",
                          "no audit log")
