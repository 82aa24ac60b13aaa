"""The ``heliosdb`` command, driven through subprocesses: the shell with piped SQL and SQL
arguments, output modes, keys (file, env, wrong, missing), HeliosDB dot-commands, every
subcommand and its exit code (0 ok, 1 failed/findings, 2 usage or input error).

Commands whose backing API is not in this build must say "... is not available: ..." and
exit 2; where a test depends on such an API it checks whichever of the two behaviours
applies to the build it runs on.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sqlite3
import sys
from pathlib import Path

import pytest

import heliosdb
from helpers.cli import assert_one_line_error, cli_env, run_cli, run_many
from helpers.sample_dbs import make_audited_db, make_encrypted_db

SQLITE_MAGIC = b"SQLite format 3\x00"


def _crypto_attr(name):
    """The key-operation API the command line would call, or None where it is missing."""
    from heliosdb.cli.common import Unavailable, heliosdb_api

    try:
        return heliosdb_api(name, name)
    except Unavailable:
        return None


def _audit_has(name: str) -> bool:
    conn = heliosdb.connect(":memory:", config="default")
    try:
        return hasattr(conn.audit, name)
    finally:
        conn.close()


needs_native = pytest.mark.skipif(not heliosdb.native_available(),
                                  reason="the encryption extension is not built here")


@pytest.fixture
def home(tmp_path):
    return tmp_path


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "db.key"
    path.write_bytes(bytes(range(32)))
    return path


@pytest.fixture
def plain_db(tmp_path):
    """A plaintext database with one table (made in-process: the tests drive the CLI)."""
    path = tmp_path / "plain.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t(a INTEGER, b TEXT)")
        c.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    c.close()
    return path


@pytest.fixture
def audited_db(tmp_path):
    """A database with an audit log (the default preset): DDL, inserts, an update."""
    return make_audited_db(tmp_path / "audited.db", "CREATE TABLE t(a INTEGER, b TEXT)",
                           "INSERT INTO t VALUES (1, 'one'), (2, 'two')",
                           "UPDATE t SET b = 'TWO' WHERE a = 2")


@pytest.fixture
def encrypted_db(tmp_path, keyfile):
    """An encrypted database under the key in ``keyfile``, one secret row."""
    return make_encrypted_db(tmp_path / "enc.db", keyfile.read_bytes(),
                             "CREATE TABLE s(x TEXT)", "INSERT INTO s VALUES ('classified')")


# --------------------------------------------------------------------------------------------
# The shell, non-interactive
# --------------------------------------------------------------------------------------------


def test_piped_sql_and_dot_commands(tmp_path, plain_db):
    proc = run_cli([str(plain_db)], cwd=tmp_path,
                   input="SELECT a, b FROM t ORDER BY a;\n.tables\nSELECT count(*)\n  FROM t;\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["1|one", "2|two", "t", "2"]
    assert proc.stderr == ""


def test_sql_arguments_run_then_exit(tmp_path, plain_db):
    proc = run_cli([str(plain_db), "SELECT b FROM t WHERE a = 2", ".mode csv",
                    "SELECT * FROM t ORDER BY a"], cwd=tmp_path, input="SELECT 'not read';\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["two", "1,one", "2,two"]


def test_output_mode_options_and_cmd(tmp_path, plain_db):
    proc = run_cli(["-json", str(plain_db), "SELECT a, b FROM t ORDER BY a"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"a": 1, "b": "one"}, {"a": 2, "b": "two"}]

    proc = run_cli(["-csv", "-header", str(plain_db), "SELECT a, b FROM t ORDER BY a"],
                   cwd=tmp_path)
    assert proc.stdout.splitlines() == ["a,b", "1,one", "2,two"]

    # -cmd runs before standard input is read; -batch keeps the output plain.
    proc = run_cli(["-batch", "-cmd", ".mode csv", "-cmd", ".headers on", str(plain_db)],
                   cwd=tmp_path, input="SELECT a FROM t WHERE a = 1;\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["a", "1"]


def test_sql_error_is_one_line_and_exit_1(tmp_path, plain_db):
    proc = run_cli([str(plain_db)], cwd=tmp_path,
                   input="SELECT * FROM nosuch;\nSELECT 'still running';\n")
    assert proc.returncode == 1
    assert "still running" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert "Error: no such table: nosuch" in proc.stderr
    assert "SQLError" not in proc.stderr  # APSW's class names never reach the user

    proc = run_cli(["-bail", str(plain_db)], cwd=tmp_path,
                   input="SELECT * FROM nosuch;\nSELECT 'never';\n")
    assert proc.returncode == 1
    assert "never" not in proc.stdout


def test_debug_adds_a_traceback(tmp_path, plain_db):
    proc = run_cli(["--debug", str(plain_db), ".backup"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_python_m_and_console_script(tmp_path, plain_db):
    script = Path(sys.executable).with_name("heliosdb")
    assert script.exists(), "the heliosdb console script is installed with the package"
    import subprocess

    proc = subprocess.run([str(script), str(plain_db), "SELECT count(*) FROM t"],
                          capture_output=True, text=True, cwd=str(tmp_path),
                          env=cli_env(tmp_path), stdin=subprocess.DEVNULL,
                          start_new_session=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    proc = run_cli(["--version"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith(f"HeliosDB {heliosdb.__version__}")
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("--key-file", "--key-env", "--config", "--user", "-cmd", "Exit status"):
        assert word in proc.stdout


def test_usage_errors_exit_2(tmp_path, plain_db):
    bad_option, no_value, key_value, bad_config = run_many([
        ["--no-such-option", str(plain_db)], ["--key-file"], ["--key=hunter2", str(plain_db)],
        ["--config", "no-such-preset", str(plain_db)]], cwd=tmp_path)
    assert_one_line_error(bad_option, 2, "Unrecognized argument")
    assert_one_line_error(no_value, 2, "needs a value")
    # A key is never taken from the command line (ps, shell history).
    assert_one_line_error(key_value, 2, "never given on the command line")
    assert_one_line_error(bad_config, 2)


def test_help_is_the_docstring(tmp_path):
    proc = run_cli([":memory:", ".help"], cwd=tmp_path)
    for name in (".audit", ".verify", ".checkpoint", ".export-audit", ".encryption",
                 ".passwd", ".rekey", ".report", ".tables", ".import", ".dump"):
        assert name in proc.stderr, name
    from heliosdb.cli.shell import HeliosShell

    proc = run_cli([":memory:", ".help export-audit", ".help verify"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ocsf" in proc.stderr and "--checkpoint FILE" in proc.stderr
    for name in dir(HeliosShell):
        if name.startswith("command_"):
            doc = getattr(HeliosShell, name).__doc__
            assert doc and ":" in doc.strip().splitlines()[0], name


def test_history_never_holds_passwd_arguments(tmp_path):
    proc = run_cli([":memory:", ".passwd hunter2"], cwd=tmp_path)
    assert_one_line_error(proc, 1, "takes no arguments")


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


@needs_native
def test_key_file_env_wrong_and_missing(tmp_path, encrypted_db, keyfile):
    assert encrypted_db.read_bytes()[:16] != SQLITE_MAGIC
    assert b"classified" not in encrypted_db.read_bytes()
    proc = run_cli(["--key-file", str(keyfile), str(encrypted_db), "SELECT x FROM s"],
                   cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "classified", proc.stderr

    env = cli_env(tmp_path, DBKEY=bytes(range(32)).hex())
    proc = run_cli(["--key-env", "DBKEY", str(encrypted_db), "SELECT x FROM s"], cwd=tmp_path,
                   env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "classified", proc.stderr

    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(range(1, 33)))
    proc = run_cli(["--key-file", str(wrong), str(encrypted_db), "SELECT x FROM s"],
                   cwd=tmp_path)
    assert_one_line_error(proc, 2, "wrong key")
    assert proc.stdout == ""

    no_key, prompt, unset, nofile = run_many([
        [str(encrypted_db), "SELECT x FROM s"], ["-k", str(encrypted_db), "SELECT 1"],
        ["--key-env", "UNSET_VAR", str(encrypted_db)],
        ["--key-file", str(tmp_path / "nokey"), str(encrypted_db)]], cwd=tmp_path)
    # No key, no terminal to ask on: a clear error, not "file is not a database".
    assert_one_line_error(no_key, 2, "is encrypted", "--key-file")
    # -k asks on the terminal; without one it says how else to give the key.
    assert_one_line_error(prompt, 2, "needs a terminal")
    assert_one_line_error(unset, 2, "UNSET_VAR")
    assert_one_line_error(nofile, 2, "key file not found")


@needs_native
def test_encryption_dot_command_and_encrypted_backup(tmp_path, encrypted_db, keyfile):
    proc = run_cli(["-json", "--key-file", str(keyfile), str(encrypted_db), ".encryption"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    facts = {r["property"]: r["value"] for r in json.loads(proc.stdout)}
    assert facts["encryption_enabled"] in (1, "True", "1")
    assert facts["encryption_algorithm"] == "AES-256-GCM"
    assert bytes(range(32)).hex() not in proc.stdout

    backup = tmp_path / "copy.db"
    proc = run_cli(["--key-file", str(keyfile), str(encrypted_db), f".backup {backup}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = backup.read_bytes()
    assert data[:16] != SQLITE_MAGIC and b"classified" not in data
    proc = run_cli(["--key-file", str(keyfile), str(backup), "SELECT x FROM s"], cwd=tmp_path)
    assert proc.stdout.strip() == "classified", proc.stderr
    assert_one_line_error(run_cli([str(backup), "SELECT 1"], cwd=tmp_path), 2, "encrypted")


@needs_native
def test_dot_open_and_close(tmp_path, plain_db, encrypted_db, keyfile):
    init = tmp_path / "init.sql"
    init.write_text(".mode csv\n")
    proc = run_cli(["-init", str(init), str(plain_db),
                    f".open --key-file {keyfile} {encrypted_db}", "SELECT x FROM s",
                    f".open {plain_db}",  # a plaintext file needs no key
                    "SELECT a, b FROM t WHERE a = 1",
                    ".close", "SELECT 'memory'",
                    f".open {encrypted_db}"], cwd=tmp_path)
    assert proc.stdout.splitlines() == ["classified", "1,one", "memory"], proc.stderr
    # The last .open had no key option and the command line gave none: it says so.
    assert_one_line_error(proc, 2, "is encrypted")


def test_plain_backup_and_restore(tmp_path, plain_db, keyfile):
    copy = tmp_path / "copy.db"
    proc = run_cli([str(plain_db), f".backup {copy}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert copy.read_bytes()[:16] == SQLITE_MAGIC
    # A key on a page copy of a plaintext database is refused: it would not encrypt.
    proc = run_cli([str(plain_db), f".backup --key-file {keyfile} {tmp_path / 'x.db'}"],
                   cwd=tmp_path)
    assert_one_line_error(proc, 1, "heliosdb encrypt")
    other = tmp_path / "other.db"
    proc = run_cli(["--create", str(other), f".restore {copy}", "SELECT count(*) FROM t"],
                   cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr


# --------------------------------------------------------------------------------------------
# Auditing from the shell
# --------------------------------------------------------------------------------------------


def _events(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT id, user, operation, target, success FROM __audit_log "
                         "ORDER BY id").fetchall()


def test_shell_sql_is_audited_and_log_is_append_only(tmp_path, audited_db):
    made = tmp_path / "made.db"
    proc = run_cli(["--create", "--config", "default", "--user", "carol", str(made),
                    "CREATE TABLE t(a INTEGER);", "INSERT INTO t VALUES (1), (2);",
                    "BEGIN;", "UPDATE t SET a = a + 1;", "ROLLBACK;",
                    "SELECT count(*) FROM t;"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    ops = [(u, op, t, ok) for _, u, op, t, ok in _events(made)]
    assert ("carol", "CREATE_TABLE", "t", 1) in ops and ("carol", "INSERT", "t", 1) in ops
    assert ("carol", "UPDATE", "t", 0) in ops  # rolled back: recorded as not done
    # Reopened without --config, a database with an audit log is still audited.
    proc = run_cli(["--user", "bob", str(audited_db), "DELETE FROM t WHERE a = 1;"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("bob", "DELETE", "t") in [(u, op, t) for _, u, op, t, _ in _events(audited_db)]
    # The log cannot be changed from the shell; the attempt is itself recorded.
    proc = run_cli(["--user", "mallory", str(audited_db), "DELETE FROM __audit_log;"],
                   cwd=tmp_path)
    assert_one_line_error(proc, 1, "append-only")
    failed = [e for e in _events(audited_db) if e[1] == "mallory" and e[4] == 0]
    assert failed and failed[0][2] == "DELETE"


def test_shell_import_is_audited(tmp_path, audited_db):
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("7,seven\n8,eight\n")
    proc = run_cli([str(audited_db), ".mode csv", f".import {csv_file} t",
                    "SELECT count(*) FROM t"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4"
    last_insert = [e for e in _events(audited_db) if e[2] == "INSERT"][-1]
    assert last_insert[3] == "t"


def test_dot_verify_and_checkpoint(tmp_path, audited_db):
    secret = tmp_path / "signing.hex"
    secret.write_text(os.urandom(32).hex() + "\n")
    cp = tmp_path / "head.checkpoint"
    proc = run_cli([str(audited_db), ".verify", f".checkpoint {cp} --signing-key {secret}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "audit log: OK" in proc.stdout and "written to" in proc.stdout
    assert "format: heliosdb-audit-checkpoint/2" in cp.read_text()
    proc = run_cli([str(audited_db), f".verify --checkpoint {cp} --verify-key {secret}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "consistent with signed checkpoint" in proc.stdout
    proc = run_cli([str(audited_db), f".checkpoint {cp}"], cwd=tmp_path)
    assert_one_line_error(proc, 2, "signing key")


def test_dot_verify_without_audit_log(tmp_path, plain_db):
    proc = run_cli([str(plain_db), ".verify"], cwd=tmp_path)
    assert_one_line_error(proc, 2, "no audit log")


# --------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------


def test_info(tmp_path, audited_db):
    proc = run_cli(["info", str(audited_db)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^tables\s+1: t$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^storage\.encryption_enabled\s+False$", proc.stdout, re.M)
    proc = run_cli(["info", "--json", str(audited_db)], cwd=tmp_path)
    info = json.loads(proc.stdout)
    assert info["audit"]["present"] and info["audit"]["events"] >= 3
    assert info["tables"] == ["__audit_log", "__audit_meta", "t"]
    before = _events(audited_db)
    run_cli(["info", str(audited_db)], cwd=tmp_path)
    assert _events(audited_db) == before  # info only reads


@needs_native
def test_info_encrypted_and_wrong_key(tmp_path, encrypted_db, keyfile):
    proc = run_cli(["info", str(encrypted_db), "--key-file", str(keyfile)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^storage\.encryption_enabled\s+True$", proc.stdout, re.M)
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x01" * 32)
    assert_one_line_error(run_cli(["info", str(encrypted_db), "--key-file", str(wrong)],
                                  cwd=tmp_path), 2, "wrong key")


def test_missing_file_and_bad_arguments_exit_2(tmp_path):
    missing = str(tmp_path / "missing.db")
    commands = [["info", missing], ["verify", missing], ["audit", missing],
                ["export", missing, "--format", "jsonl", "--out", "x.jsonl"],
                ["report", missing, "--out", "r.html"], ["rekey", missing],
                ["passwd", missing], ["decrypt", missing, "--out", "x.db"],
                ["encrypt", missing, "--out", "x.db"]]
    extra = [["export", missing, "--format", "xml", "--out", "x"], ["info"],
             ["verify", "--help"]]
    results = run_many(commands + extra, cwd=tmp_path)
    for cmd, proc in zip(commands, results):
        assert_one_line_error(proc, 2, "no such database file")
    assert not os.path.exists(missing)  # read-only commands never create it
    bad_format, no_file, help_ = results[len(commands):]
    assert_one_line_error(bad_format, 2, "invalid choice")
    assert_one_line_error(no_file, 2, "required")
    assert help_.returncode == 0 and "--checkpoint" in help_.stdout


def test_verify_ok_then_tampered(tmp_path, audited_db):
    before = _events(audited_db)
    proc = run_cli(["verify", str(audited_db)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("audit log: OK")
    assert _events(audited_db) == before  # verifying appends nothing

    with sqlite3.connect(audited_db) as c:  # tamper behind HeliosDB's back
        c.execute("UPDATE __audit_log SET target = 'forged' WHERE id = 2")
    proc = run_cli(["verify", "--json", str(audited_db)], cwd=tmp_path)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["audit"]["fault"] == "modified" and report["audit"]["first_bad_id"] == 2
    proc = run_cli(["verify", str(audited_db)], cwd=tmp_path)
    assert proc.returncode == 1 and "FAILED: modified at event 2" in proc.stdout


def test_verify_checkpoint_detects_truncation(tmp_path, audited_db):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = tmp_path / "signer.pem"
    pem.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cp = tmp_path / "cp.txt"
    env = cli_env(tmp_path, HELIOSDB_SIGNING_KEY_FILE=str(pem))
    proc = run_cli([str(audited_db), f".checkpoint {cp}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    event_id = int(re.search(r"^event_id: (\d+)$", cp.read_text(), re.M).group(1))

    proc = run_cli(["verify", str(audited_db), "--checkpoint", str(cp), "--verify-key",
                    str(pem)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Without --verify-key, the public key in the checkpoint is used, and it says so.
    proc = run_cli(["verify", str(audited_db), "--checkpoint", str(cp)], cwd=tmp_path)
    assert proc.returncode == 0 and "public key it carries" in proc.stderr

    with sqlite3.connect(audited_db) as c:
        c.execute("DELETE FROM __audit_log WHERE id >= ?", (event_id,))
    proc = run_cli(["verify", str(audited_db), "--checkpoint", str(cp), "--verify-key",
                    str(pem)], cwd=tmp_path)
    assert proc.returncode == 1 and "FAILED: truncated" in proc.stdout, proc.stdout
    proc = run_cli(["verify", str(audited_db), "--checkpoint", str(tmp_path / "none")],
                   cwd=tmp_path)
    assert_one_line_error(proc, 2, "checkpoint file not found")


def test_not_a_database_is_input_error(tmp_path, plain_db):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n" * 10)
    no_log, info_text, shell_text = run_many([
        ["verify", str(plain_db)], ["info", str(text)], [str(text), "SELECT 1"]],
        cwd=tmp_path)
    assert_one_line_error(no_log, 2, "no audit log")
    assert_one_line_error(info_text, 2, "not a database")
    assert_one_line_error(shell_text, 2, "not a database")


def test_audit_subcommand(tmp_path, audited_db, plain_db):
    proc = run_cli(["audit", str(audited_db), "--op", "insert", "--json"], cwd=tmp_path)
    if not _audit_has("query"):
        assert_one_line_error(proc, 2, "is not available")
        return
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events and all(e["operation"] == "INSERT" for e in events)
    proc = run_cli(["audit", str(audited_db), "--user", "alice", "--since", "1d"], cwd=tmp_path)
    assert proc.returncode == 0 and "CREATE_TABLE" in proc.stdout, proc.stderr
    assert_one_line_error(run_cli(["audit", str(audited_db), "--since", "yesterday"],
                                  cwd=tmp_path), 2, "bad time")
    assert_one_line_error(run_cli(["audit", str(plain_db)], cwd=tmp_path), 2, "no audit log")


def test_dot_audit(tmp_path, audited_db):
    proc = run_cli(["-json", str(audited_db), ".audit op=UPDATE user=alice"], cwd=tmp_path)
    if not _audit_has("query"):
        assert_one_line_error(proc, 2, "is not available")
        return
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["operation"] for r in rows] == ["UPDATE"] and rows[0]["target"] == "t"
    assert_one_line_error(run_cli([str(audited_db), ".audit colour=red"], cwd=tmp_path), 2,
                          "bad filter")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "ocsf", "syslog"])
def test_export(tmp_path, audited_db, fmt):
    out = tmp_path / f"audit.{fmt}"
    proc = run_cli(["export", str(audited_db), "--format", fmt, "--out", str(out)],
                   cwd=tmp_path)
    if not (_audit_has("export") or _audit_has(f"export_{fmt}")):
        assert_one_line_error(proc, 2, "is not available")
        return
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and out.stat().st_size > 0
    assert re.search(r"\d+ audit events \(ids 1\.\.\d+\) exported", proc.stderr), proc.stderr
    # Incremental, from the shell: only the events after id 2.
    proc = run_cli([str(audited_db), f".export-audit {fmt} {tmp_path / ('dot.' + fmt)} "
                    "--since-id 2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(ids 3.." in proc.stdout


def test_report(tmp_path, audited_db):
    out = tmp_path / "report.html"
    proc = run_cli(["report", str(audited_db), "--preset", "hipaa", "--out", str(out)],
                   cwd=tmp_path)
    if not _audit_has("report") or importlib.util.find_spec("heliosdb.audit.reports") is None:
        assert_one_line_error(proc, 2, "is not available")
        return
    assert proc.returncode in (0, 1), proc.stderr  # 1: the report has findings
    assert out.exists() and "<html" in out.read_text().lower()


@needs_native
def test_key_operation_subcommands(tmp_path, encrypted_db, keyfile):
    newkey = tmp_path / "new.key"
    newkey.write_bytes(bytes(range(100, 132)))
    plain = tmp_path / "decrypted.db"
    proc = run_cli(["decrypt", str(encrypted_db), "--key-file", str(keyfile), "--out",
                    str(plain)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert plain.read_bytes()[:16] == SQLITE_MAGIC
    c = sqlite3.connect(plain)
    assert c.execute("SELECT x FROM s").fetchall() == [("classified",)]
    c.close()
    proc = run_cli(["decrypt", str(encrypted_db), "--key-file", str(keyfile), "--out",
                    str(plain)], cwd=tmp_path)
    assert_one_line_error(proc, 2, "--force")  # never overwrites without being told

    enc2 = tmp_path / "reencrypted.db"
    proc = run_cli(["encrypt", str(plain), "--new-key-file", str(newkey), "--out",
                    str(enc2)], cwd=tmp_path)
    if _crypto_attr("encrypt") is None:
        assert_one_line_error(proc, 2, "is not available")
    else:
        assert proc.returncode == 0, proc.stderr
        proc = run_cli(["--key-file", str(newkey), str(enc2), "SELECT x FROM s"],
                       cwd=tmp_path)
        assert proc.stdout.strip() == "classified", proc.stderr
        # --out exists: refused unless --force
        assert_one_line_error(run_cli(["encrypt", str(plain), "--new-key-file", str(newkey),
                                       "--out", str(enc2)], cwd=tmp_path), 2, "--force")

    proc = run_cli(["rekey", str(encrypted_db), "--key-file", str(keyfile)], cwd=tmp_path)
    if _crypto_attr("rotate_key") is None:
        assert_one_line_error(proc, 2, "is not available")
    else:
        assert proc.returncode == 0, proc.stderr
        # .rekey in the shell: the database is closed, rotated and reopened.
        proc = run_cli(["-json", "--key-file", str(keyfile), str(encrypted_db), ".rekey",
                        "SELECT x FROM s"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("data key rotated") and "classified" in lines[1]
        proc = run_cli(["info", "--json", str(encrypted_db), "--key-file", str(keyfile)],
                       cwd=tmp_path)
        assert json.loads(proc.stdout)["storage"].get("data_key_generation", 3) == 3

    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x02" * 32)
    proc = run_cli(["passwd", str(encrypted_db), "--key-file", str(wrong),
                    "--new-key-file", str(newkey)], cwd=tmp_path)
    if _crypto_attr("change_passphrase") is None:
        assert_one_line_error(proc, 2, "is not available")
    else:
        assert_one_line_error(proc, 2, "wrong key")
        proc = run_cli(["passwd", str(encrypted_db), "--key-file", str(keyfile),
                        "--new-key-file", str(newkey)], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        proc = run_cli(["--key-file", str(newkey), str(encrypted_db), "SELECT x FROM s"],
                       cwd=tmp_path)
        assert proc.stdout.strip() == "classified", proc.stderr
        assert_one_line_error(run_cli(["--key-file", str(keyfile), str(encrypted_db)],
                                      cwd=tmp_path), 2, "wrong key")


@needs_native
def test_dot_passwd_and_rekey_without_terminal(tmp_path, encrypted_db, keyfile):
    """.passwd asks for the new passphrase at the terminal: with none, it says so."""
    proc = run_cli(["--key-file", str(keyfile), str(encrypted_db), ".passwd"], cwd=tmp_path)
    if _crypto_attr("change_passphrase") is None:
        assert_one_line_error(proc, 2, "is not available")
    else:
        assert_one_line_error(proc, 2, "needs a terminal")
    proc = run_cli(["--create", str(tmp_path / "plain.db"), ".rekey"], cwd=tmp_path)
    if _crypto_attr("rotate_key") is None:
        assert_one_line_error(proc, 2, "is not available")
    else:
        assert_one_line_error(proc, 1, "not encrypted")


@needs_native
def test_verify_pages_finds_a_tampered_page(tmp_path, encrypted_db, keyfile):
    proc = run_cli(["verify", str(encrypted_db), "--key-file", str(keyfile), "--pages"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pages: OK")
    data = bytearray(encrypted_db.read_bytes())
    header, page = 4096, 4096  # HeliosDB header, then pages of 4096 bytes
    assert len(data) >= header + 2 * page
    data[header + page + 100] ^= 0x01  # one bit of page 2
    encrypted_db.write_bytes(bytes(data))
    proc = run_cli(["verify", str(encrypted_db), "--key-file", str(keyfile), "--pages",
                    "--json"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["pages"]["ok"] is False
    bad = [b[1] if isinstance(b, list) else b for b in result["pages"]["bad_pages"]]
    assert bad == [2]  # entries: a page number, or [file, page, reason]
    proc = run_cli(["verify", str(encrypted_db), "--key-file", str(keyfile), "--pages"],
                   cwd=tmp_path)
    assert proc.returncode == 1 and "pages: FAILED: 1 bad page(s): 2" in proc.stdout
    # A plaintext copy is never written from a tampered file.
    out = tmp_path / "plain-copy.db"
    proc = run_cli(["decrypt", str(encrypted_db), "--key-file", str(keyfile), "--out",
                    str(out)], cwd=tmp_path)
    assert_one_line_error(proc, 1, "page 2")
    assert not out.exists()
    proc = run_cli(["verify", str(encrypted_db), "--pages"], cwd=tmp_path)
    assert_one_line_error(proc, 2, "is encrypted")


def test_key_operations_on_plain_file_are_input_errors(tmp_path, plain_db):
    for cmd in (["rekey", str(plain_db)], ["passwd", str(plain_db)],
                ["decrypt", str(plain_db), "--out", "x.db"]):
        assert_one_line_error(run_cli(cmd, cwd=tmp_path), 2, "not encrypted")


def test_demo_dispatches_to_heliosdb_demo(tmp_path):
    proc = run_cli(["demo", "--help"], cwd=tmp_path)
    try:
        from heliosdb import demo  # noqa: F401
    except ImportError:
        assert_one_line_error(proc, 2, "demo is not available")
        return
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
