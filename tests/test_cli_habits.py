"""Issue 19: the command line as a person uses it. Each mistake the issue lists is made
here through the real ``heliosdb`` command, and the new behaviour is checked: options
before or after the subcommand, no stray files, a missing database is an error unless
``--create``, ``file:`` URIs and read-only files, hints that name options which exist and
work when followed, the exit-status table of docs/CLI.md, errors that name the file, and
a broken pipe that ends quietly.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

import heliosdb
from heliosdb.cli import common as cli_common
from helpers.cli import HELIOSDB, assert_one_line_error, cli_env, run_cli
from helpers.sample_dbs import make_audited_db

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))

needs_native = pytest.mark.skipif(not heliosdb.native_available(),
                                  reason="the encryption extension is not built here")


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "k.key"
    path.write_bytes(KEY)
    return path


@pytest.fixture
def audited_db(tmp_path):
    """An audited database whose table t holds a = 1 and a = 2."""
    return make_audited_db(tmp_path / "audited.db", "CREATE TABLE t(a INTEGER)",
                           "INSERT INTO t VALUES (1), (2)")


@pytest.fixture
def shop(tmp_path):
    """An encrypted, audited database (raw key in k.key)."""
    if not heliosdb.native_available():
        pytest.skip("the encryption extension is not built here")
    (tmp_path / "k.key").write_bytes(KEY)
    path = tmp_path / "shop.db"
    conn = heliosdb.connect(str(path), key=KEY, config="default", audit_user="alice",
                            isolation_level=None)
    conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO orders(total) VALUES (9.5), (12.0)")
    conn.close()
    return path


def _events(path: Path) -> list:
    """The log of a plaintext database, read with sqlite3 (which records nothing)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, operation FROM __audit_log ORDER BY id").fetchall()
    finally:
        conn.close()


def _listing(d: Path) -> set:
    return {p.name for p in d.iterdir()}


# --------------------------------------------------------------------------------------------
# 1. options before or after the subcommand; no stray files; --create
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "info", "audit"])
def test_key_option_before_the_subcommand(tmp_path, shop, command):
    before = _listing(tmp_path)
    ahead = run_cli(["--key-file", "k.key", command, "shop.db"], cwd=tmp_path)
    after = run_cli([command, "shop.db", "--key-file", "k.key"], cwd=tmp_path)
    assert ahead.returncode == 0, ahead.stderr
    assert ahead.stdout.replace(str(tmp_path), "") == after.stdout.replace(str(tmp_path), "") \
        or command == "audit"  # audit lists its own session's LOGIN too
    assert "syntax error" not in ahead.stderr
    assert _listing(tmp_path) == before  # no database named "verify", "info" or "audit"
    if command == "verify":
        assert ahead.stdout.startswith("audit log: OK")
    if command == "info":
        assert "orders" in ahead.stdout


def test_config_option_before_the_subcommand(tmp_path, audited_db):
    before = _listing(tmp_path)
    proc = run_cli(["--config", "default", "--user", "bob", "verify", "audited.db"],
                   cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("audit log: OK"), proc.stderr
    assert _listing(tmp_path) == before


def test_subcommand_without_file_is_a_usage_error_and_creates_nothing(tmp_path, keyfile):
    before = _listing(tmp_path)
    for args in (["--key-file", "k.key", "verify"], ["--config", "default", "info"]):
        proc = run_cli(args, cwd=tmp_path)
        assert_one_line_error(proc, 2, "required: FILE")
    assert _listing(tmp_path) == before


def test_a_file_named_like_a_subcommand_is_reached_as_a_path(tmp_path):
    with sqlite3.connect(tmp_path / "verify") as c:
        c.execute("CREATE TABLE v(x)")
        c.execute("INSERT INTO v VALUES ('the file named verify')")
    c.close()
    proc = run_cli(["./verify", "SELECT x FROM v"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "the file named verify"
    # After "--" the word is still not a database: the error says how to reach the file.
    line = assert_one_line_error(run_cli(["--", "verify", "SELECT 1"], cwd=tmp_path), 2,
                                 "./verify")
    assert "subcommand" in line


def test_missing_database_is_an_error_unless_create(tmp_path, keyfile):
    before = _listing(tmp_path)
    for args in (["new.db", "SELECT 1"], ["--key-file", "k.key", "new.db", "SELECT 1"],
                 ["new.db"], ["file:new.db?mode=ro", "SELECT 1"]):
        proc = run_cli(args, cwd=tmp_path)
        assert_one_line_error(proc, 2, "new.db: no such database file")
    assert _listing(tmp_path) == before
    proc = run_cli(["new.db", "--create", "CREATE TABLE t(a)"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "new.db").read_bytes()[:16] == b"SQLite format 3\x00"
    # A URI that asks for creation (mode=rwc) is asking.
    proc = run_cli(["file:other.db?mode=rwc", "CREATE TABLE t(a)"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "other.db").exists()


# --------------------------------------------------------------------------------------------
# 2. URIs and read-only files
# --------------------------------------------------------------------------------------------


def test_uri_is_a_uri_and_read_only_session_is_unrecorded(tmp_path, audited_db):
    before_files = _listing(tmp_path)
    before = _events(audited_db)
    proc = run_cli(["file:audited.db?mode=ro", "SELECT count(*) FROM t",
                    "SELECT sum(a) FROM t"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "3"]
    # Said once, on stderr; the log is as it was.
    assert proc.stderr.count("open read-only") == 1, proc.stderr
    assert "writes nothing to its audit log" in proc.stderr
    assert _events(audited_db) == before
    assert _listing(tmp_path) == before_files  # no file named "file:audited.db?mode=ro"
    # As in Python:
    conn = heliosdb.connect("file:audited.db?mode=ro".replace("audited.db", str(audited_db)),
                            uri=True)
    assert conn.execute("SELECT sum(a) FROM t").fetchone()[0] == 3
    conn.close()
    # A change is refused, and the log still is as it was.
    proc = run_cli(["file:audited.db?mode=ro", "INSERT INTO t VALUES (9)"], cwd=tmp_path)
    assert proc.returncode == 1 and "readonly" in proc.stderr
    assert _events(audited_db) == before


def test_readonly_option_and_policy_that_records_reads(tmp_path):
    path = tmp_path / "v.db"
    conn = heliosdb.connect(str(path), config="verbose", isolation_level=None)
    conn.execute("CREATE TABLE t(a)")
    conn.close()
    before = _events(path)
    proc = run_cli(["-readonly", "v.db", "SELECT count(*) FROM t"], cwd=tmp_path)
    # verbose records reads: a read-only session cannot, so the read is refused, clearly.
    assert proc.returncode == 1
    assert "records reads" in proc.stderr and "read-write" in proc.stderr
    assert _events(path) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write a mode 0444 file, so it is not read-only here "
                           "(the -readonly and mode=ro tests cover the same session)")
def test_a_file_without_write_permission_can_be_queried(tmp_path, audited_db):
    before = _events(audited_db)
    audited_db.chmod(0o444)
    try:
        proc = run_cli(["audited.db", "SELECT count(*) FROM t"], cwd=tmp_path)
    finally:
        audited_db.chmod(0o644)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert proc.stderr.count("open read-only") == 1
    assert _events(audited_db) == before


# --------------------------------------------------------------------------------------------
# 3. exit statuses, errors naming the file, broken pipes
# --------------------------------------------------------------------------------------------


def _doc_exit_table() -> dict:
    text = (ROOT / "docs" / "CLI.md").read_text()
    section = text.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*`(EXIT_[A-Z_]+)`\s*\|\s*(.+?)\s*\|$", line)
        if m:
            rows[int(m.group(1))] = (m.group(2), m.group(3))
    return rows


def test_exit_status_table_matches_the_code():
    rows = _doc_exit_table()
    constants = {name: getattr(cli_common, name) for name in dir(cli_common)
                 if name.startswith("EXIT_") and isinstance(getattr(cli_common, name), int)}
    assert rows, "docs/CLI.md has no exit status table"
    assert set(rows) == set(cli_common.EXIT_STATUSES) == set(constants.values())
    for status, (name, meaning) in rows.items():
        assert constants[name] == status
        assert meaning == cli_common.EXIT_STATUSES[status], (status, meaning)


def test_input_errors_exit_2_and_name_the_file(tmp_path, keyfile, shop):
    (tmp_path / "notdb").write_bytes(b"hello, I am not a database" * 10)
    cases = [
        (["notdb", "SELECT 1"], "notdb"),
        (["--key-file", "k.key", "notdb", "SELECT 1"], "notdb"),
        (["info", "notdb"], "notdb"),
        (["verify", "notdb", "--key-file", "k.key"], "notdb"),
        (["--config", "hipaa", "--create", "h.db", "SELECT 1"], "h.db"),
        (["shop.db", "SELECT 1"], "shop.db"),                      # KeyRequired
        (["audit", "shop.db"], "shop.db"),
        (["--config", "no-such-preset", "shop.db", "SELECT 1"], "shop.db"),
    ]
    for args, name in cases:
        proc = run_cli(args, cwd=tmp_path)
        line = assert_one_line_error(proc, cli_common.EXIT_USAGE, name)
        assert "Traceback" not in proc.stderr, line
    assert not (tmp_path / "h.db").exists()
    # The encrypting preset without a key says how to give one (not config language).
    proc = run_cli(["--config", "hipaa", "--create", "h.db", "SELECT 1"], cwd=tmp_path)
    assert "--key-file FILE" in proc.stderr


def _many_events(tmp_path: Path, n: int = 3000) -> Path:
    path = tmp_path / "busy.db"
    conn = heliosdb.connect(str(path), config="default", isolation_level=None)
    conn.execute("CREATE TABLE t(a TEXT)")
    for i in range(n):
        conn.execute("INSERT INTO t VALUES (?)", ("row %d %s" % (i, "x" * 40),))
    conn.close()
    return path


@pytest.mark.parametrize("args", [["audit", "busy.db"],
                                  ["busy.db", "SELECT a FROM t", "SELECT a FROM t"]])
def test_broken_pipe_ends_quietly(tmp_path, args):
    _many_events(tmp_path)
    proc = subprocess.Popen([*HELIOSDB, *args], cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=cli_env(tmp_path), start_new_session=True)
    first = proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first
    assert err == "", err
    assert code == cli_common.EXIT_BROKEN_PIPE


# --------------------------------------------------------------------------------------------
# 4. keys typed at the prompt; info without a key
# --------------------------------------------------------------------------------------------


@needs_native
def test_prompted_entry_tried_as_raw_key_then_passphrase(tmp_path, capsys):
    """key_from_entry is what the prompt does with the text typed (test_cli_pty.py drives
    it at a real terminal)."""
    from heliosdb.cli.common import CLIError, key_from_entry

    raw = tmp_path / "raw.db"
    heliosdb.connect(str(raw), key=KEY).close()
    key = key_from_entry(KEY.hex().upper(), str(raw))
    assert key.kind == "raw"
    heliosdb.connect(str(raw), key=key).close()
    with pytest.raises(CLIError) as err:
        key_from_entry(bytes(32).hex(), str(raw))
    assert "tried the entry as a raw 64-hex key" in str(err.value)
    # A passphrase that happens to be 64 hex characters still opens its database.
    hexy = "ab" * 32
    phr = tmp_path / "phr.db"
    heliosdb.connect(str(phr), key=hexy).close()
    key = key_from_entry(hexy, str(phr))
    assert key.kind == "passphrase"
    heliosdb.connect(str(phr), key=key).close()
    with pytest.raises(CLIError) as err:
        key_from_entry("wrong", str(phr))
    assert "tried the entry as a passphrase" in str(err.value)


def test_info_shows_the_public_header_without_a_key(tmp_path, shop):
    proc = run_cli(["info", "shop.db"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert rows["storage.encryption_enabled"] == "True"
    assert rows["storage.encryption_algorithm"] == "aes-256-gcm"
    assert '"kind": "raw"' in rows["storage.key_slots"]
    assert rows["tables"].startswith("(encrypted")
    assert "orders" not in proc.stdout
    assert "only the public header" in proc.stderr and "--key-file" in proc.stderr
    with_key = run_cli(["info", "shop.db", "--key-file", "k.key", "--json"], cwd=tmp_path)
    import json

    info = json.loads(with_key.stdout)
    assert "orders" in info["tables"]
    assert rows["storage.file_id"] == info["storage"]["file_id"]
