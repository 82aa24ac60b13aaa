"""Issue 15, the shell's part: an audited database stays audited. No dot-command of the
``heliosdb`` shell may change data or the audit log unrecorded.

Every attack runs against an audited database in three forms (plaintext with the default
log ``__audit_log``, encrypted, and plaintext with a log of another name), mostly through
an in-process :class:`HeliosShell` driven like the command line drives it, and the
headline ones through the real ``heliosdb`` command. After each attempt the database is
reopened with ``heliosdb.connect`` and must show the log it had before, event for event,
verifying OK, the data unchanged, and the refused attempt recorded as a failed
``SHELL_COMMAND`` event of the attacking user.
"""
from __future__ import annotations

import dataclasses
import io
import sqlite3
from pathlib import Path
from typing import Any, Optional

import apsw
import apsw.shell
import pytest

import heliosdb
from heliosdb.cli.common import CLIError, KeySpec, Opener
from heliosdb.cli.shell import (
    AUDIT_CHECKED,
    AUDIT_HARMLESS,
    HeliosShell,
    _connect_checked,
    _run_one,
)
from helpers.cli import run_cli

CUSTOM_TABLE = "shell_log"
KEY = bytes(range(32))
REFUSED = "is refused on an audited database"


@dataclasses.dataclass
class AuditedDB:
    """An audited database made through the API, and how to open it again."""

    path: Path
    table: str
    api_config: Any           # for heliosdb.connect
    shell_config: str         # for --config / Opener
    key: Optional[bytes]
    keyfile: Optional[Path]

    @property
    def keyspec(self) -> KeySpec:
        return KeySpec("file", str(self.keyfile)) if self.keyfile else KeySpec()

    @property
    def cli_args(self) -> list[str]:
        args = ["--key-file", str(self.keyfile)] if self.keyfile else []
        return args + ["--config", self.shell_config, "--user", "mallory"]

    def connect(self, **kw: Any) -> heliosdb.Connection:
        return heliosdb.connect(str(self.path), key=self.key, config=self.api_config,
                                isolation_level=None, **kw)


@dataclasses.dataclass
class Snapshot:
    events: list          # (id, user, operation, target, success, checksum)
    rows: list
    verified: bool
    message: str

    def refused(self, target: str, user: str = "mallory") -> list:
        return [e for e in self.events if e[2] == "SHELL_COMMAND" and e[3] == target
                and e[4] == 0 and e[1] == user]


def snapshot(db: AuditedDB) -> Snapshot:
    """The log, the data and the verification, as the API sees them on reopening."""
    conn = db.connect(audit_user="auditor")
    try:
        events = conn.execute(f'SELECT id, "user", operation, target, success, checksum '
                              f'FROM {db.table} ORDER BY id').fetchall()
        rows = conn.execute("SELECT a, b FROM t ORDER BY a").fetchall()
        report = conn.audit.verify()
        return Snapshot(events, rows, report.ok, report.message)
    finally:
        conn.close()


def assert_intact(before: Snapshot, after: Snapshot) -> None:
    """Nothing the log held was lost or changed, it verifies, the data is unchanged."""
    assert after.verified, after.message
    assert after.events[:len(before.events)] == before.events
    assert len(after.events) > len(before.events)
    assert after.rows == before.rows


@pytest.fixture(params=["plain", "encrypted", "custom-table"])
def adb(request, tmp_path) -> AuditedDB:
    kind = request.param
    keyfile = None
    key = None
    table = "__audit_log"
    api_config: Any = "default"
    shell_config = "default"
    if kind == "encrypted":
        if not heliosdb.native_available():
            pytest.skip("the encryption extension is not built here")
        keyfile = tmp_path / "db.key"
        keyfile.write_bytes(KEY)
        key = KEY
    elif kind == "custom-table":
        table = CUSTOM_TABLE
        api_config = {"extends": "default", "name": "shelltest",
                      "audit": {"table_name": CUSTOM_TABLE}}
        toml = tmp_path / "shelltest.toml"
        toml.write_text(f'extends = "default"\nname = "shelltest"\n\n[audit]\n'
                        f'table_name = "{CUSTOM_TABLE}"\n')
        shell_config = str(toml)
    db = AuditedDB(tmp_path / f"{kind}.db", table, api_config, shell_config, key, keyfile)
    conn = db.connect(audit_user="alice")
    conn.execute("CREATE TABLE t(a INTEGER, b TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    conn.close()
    return db


class Driven:
    """A HeliosShell on ``db`` opened the way ``heliosdb`` opens it, as user mallory."""

    def __init__(self, db: AuditedDB, shell_class: type = HeliosShell,
                 user: str = "mallory") -> None:
        self.opener = Opener(key=db.keyspec, config=db.shell_config, user=user,
                             prompt_if_needed=False)
        conn = _connect_checked(self.opener, str(db.path))
        self.out, self.err = io.StringIO(), io.StringIO()
        self.shell = shell_class(conn, self.opener, stdin=io.StringIO(""), stdout=self.out,
                                 stderr=self.err)
        assert self.shell.audited

    def run(self, command: str) -> str:
        """Run one command; what it wrote to stderr."""
        start = len(self.err.getvalue())
        _run_one(self.shell, command)
        return self.err.getvalue()[start:]

    def close(self) -> None:
        self.shell.close()


def driven_attack(db: AuditedDB, commands: list[str]) -> tuple[Driven, list[str]]:
    d = Driven(db)
    try:
        errors = [d.run(c) for c in commands]
    finally:
        d.close()
    return d, errors


# --------------------------------------------------------------------------------------------
# The reported attack, through the real command: refused, exit 1, log intact and recorded
# --------------------------------------------------------------------------------------------


def test_writable_schema_attack_through_the_command(tmp_path, adb):
    before = snapshot(adb)
    proc = run_cli([*adb.cli_args, str(adb.path), ".dbconfig writable_schema 1",
                    f"delete from sqlite_master where name like '{adb.table}%'"], cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines[0] == ("Error: .dbconfig writable_schema is refused on an audited database: "
                        "it would let SQL rewrite the audit log")
    assert "Traceback" not in proc.stderr
    assert "writable_schema: 1" not in proc.stdout
    after = snapshot(adb)
    assert_intact(before, after)
    assert len(after.refused(".dbconfig")) == 1


def test_default_log_is_protected_without_config_option(tmp_path, adb):
    """Opened without --config: the stored policy is in force, whatever the log's name."""
    before = snapshot(adb)
    args = ["--key-file", str(adb.keyfile)] if adb.keyfile else []
    proc = run_cli([*args, str(adb.path), ".dbconfig writable_schema 1",
                    f"delete from sqlite_master where name like '{adb.table}%'"], cwd=tmp_path)
    assert proc.returncode == 1
    assert REFUSED in proc.stderr.splitlines()[0]
    assert_intact(before, snapshot(adb))


def test_init_python_file_is_refused(tmp_path, adb):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    f"db.authorizer = None\ndb.execute('DELETE FROM {adb.table}')\n")
    before = snapshot(adb)
    proc = run_cli([*adb.cli_args, "-init", str(evil), str(adb.path), "SELECT 1"],
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert ".read FILE.py is refused on an audited database" in proc.stderr
    assert not marker.exists()
    after = snapshot(adb)
    assert_intact(before, after)
    assert len(after.refused(".read")) == 1


# --------------------------------------------------------------------------------------------
# Each side door, in-process
# --------------------------------------------------------------------------------------------

DBCONFIG = {
    # name: (value an attacker would set, what the error says)
    "writable_schema": ("1", "it would let SQL rewrite the audit log"),
    "defensive": ("0", "corrupt the database file and its audit log"),
    "trusted_schema": ("1", "side effects"),
    "enable_trigger": ("0", "triggers"),
    "enable_load_extension": ("1", "extension"),
    "reset_database": ("1", "wipe the database"),
    "enable_view": ("0", "changes how SQLite treats"),
    "legacy_alter_table": ("1", "changes how SQLite treats"),
}


@pytest.mark.parametrize("name", sorted(DBCONFIG))
def test_dbconfig_changes_are_refused(adb, name):
    value, reason = DBCONFIG[name]
    op = getattr(apsw, "SQLITE_DBCONFIG_" + name.upper())
    before = snapshot(adb)
    d = Driven(adb)
    try:
        setting = d.shell.db.config(op, -1)
        err = d.run(f".dbconfig {name} {value}")
        assert err.startswith(f"Error: .dbconfig {name} {REFUSED}: "), err
        assert reason in err
        assert d.shell.db.config(op, -1) == setting  # unchanged
        assert d.shell.error_count == 1 and d.shell.exit_status == 1
        # Reading stays allowed: the list, and one setting with -1.
        assert d.run(".dbconfig") == "" and f"{name}:" in d.out.getvalue()
        assert d.run(f".dbconfig {name} -1") == ""
    finally:
        d.close()
    after = snapshot(adb)
    assert_intact(before, after)
    assert len(after.refused(".dbconfig")) == 1


def test_dbconfig_planner_flags_may_change_and_guards_only_tighten(adb):
    d = Driven(adb)
    try:
        assert d.run(".dbconfig enable_qpsg 1") == ""
        assert d.shell.db.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, -1) == 1
        for name, stricter in (("defensive", 1), ("writable_schema", 0),
                               ("trusted_schema", 0), ("enable_load_extension", 0)):
            assert d.run(f".dbconfig {name} {stricter}") == "", name
            op = getattr(apsw, "SQLITE_DBCONFIG_" + name.upper())
            assert d.shell.db.config(op, -1) == stricter, name
    finally:
        d.close()


def test_audited_shell_connection_is_defensive(tmp_path, adb):
    """Opened defensive (the command line, .open, and a rekey's reopening), so SQL cannot
    corrupt the file behind the log: e.g. PRAGMA journal_mode=OFF is ignored."""
    proc = run_cli([*adb.cli_args, str(adb.path), ".dbconfig defensive -1",
                    "PRAGMA journal_mode=OFF", "PRAGMA journal_mode",
                    ".open :memory:", f".open {adb.path}", ".dbconfig defensive -1"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "defensive: 1" and lines[-1] == "defensive: 1", lines
    assert "off" not in [ln.strip().lower() for ln in lines[1:3]], lines


def _attack(tmp_path: Path, db: AuditedDB, kind: str) -> tuple[list[str], str, Path]:
    """(commands, refused target, marker file that must not appear)."""
    marker = tmp_path / f"marker-{kind}"
    payload = (f"open({str(marker)!r}, 'w').close(); db.authorizer = None; "
               f"db.execute('DELETE FROM {db.table}')")
    if kind == "load":
        return [f".load {tmp_path / 'no_such_extension'}"], ".load", marker
    if kind == "py":
        return [f".py {payload}"], ".py", marker
    if kind == "read-py":
        script = tmp_path / "evil.py"
        script.write_text(payload.replace("; ", "\n") + "\n")
        return [f".read {script}"], ".read", marker
    if kind == "shell":
        return [f".shell touch {marker}"], ".shell", marker
    if kind == "limit":
        return [".limit length 300", "INSERT INTO t VALUES (3, 'three')"], ".limit", marker
    if kind == "open-new":
        return [f".open --new {db.path}"], ".open", marker
    if kind == "restore":
        # A copy without an audit log, of the same kind (encrypted or not).
        copy = tmp_path / f"copy-{db.path.name}"
        c = heliosdb.connect(str(copy), key=db.key, isolation_level=None)
        c.execute("CREATE TABLE t(a INTEGER, b TEXT)")
        c.close()
        return [f".restore {copy}"], ".restore", marker
    # Commands that write a file, aimed at the database file or its journal: truncating
    # it would destroy the log, and the next connection would start a new one.
    writers = {"output-db": (".output", "{db}"), "output-journal": (".output", "{db}-journal"),
               "pages-svg-db": (".pages-svg", "{db}"),
               "export-audit-db": (".export-audit", "jsonl {db}"),
               "checkpoint-db": (".checkpoint", "{db}"), "report-db": (".report", "{db}"),
               "backup-wal": (".backup", "{db}-wal")}
    if kind in writers:
        command, args = writers[kind]
        return [f"{command} {args.format(db=db.path)}", "SELECT 'x' FROM t"], command, marker
    raise AssertionError(kind)


ATTACKS = ["load", "py", "read-py", "shell", "limit", "open-new", "restore", "output-db",
           "output-journal", "pages-svg-db", "export-audit-db", "checkpoint-db", "report-db",
           "backup-wal"]


@pytest.mark.parametrize("kind", ATTACKS)
def test_side_door_is_refused_and_recorded(tmp_path, adb, kind):
    commands, target, marker = _attack(tmp_path, adb, kind)
    before = snapshot(adb)
    d, errors = driven_attack(adb, commands)
    assert REFUSED in errors[0], errors
    assert errors[0].startswith(f"Error: {target}"), errors[0]
    assert d.shell.exit_status == 1
    assert not marker.exists()
    after = snapshot(adb)
    if kind == "limit":  # the INSERT after the refused .limit is audited as usual
        assert after.rows == before.rows + [(3, "three")]
        before = dataclasses.replace(before, rows=after.rows)
    assert_intact(before, after)
    assert len(after.refused(target)) == 1
    assert adb.path.exists()


def test_refused_inside_a_rolled_back_transaction_is_still_recorded(adb):
    before = snapshot(adb)
    d, errors = driven_attack(adb, ["BEGIN", ".load nothing_here",
                                    "INSERT INTO t VALUES (5, 'five')", "ROLLBACK"])
    assert REFUSED in errors[1]
    after = snapshot(adb)
    assert_intact(before, after)
    assert len(after.refused(".load")) == 1


def test_parameter_set_runs_one_select_on_the_audited_connection(adb):
    before = snapshot(adb)
    d = Driven(adb)
    try:
        err = d.run(".parameter set x 1); INSERT INTO t VALUES (99, 'sneaked'); SELECT (1")
        assert err.startswith("Error: Does not appear to be a valid SQLite value")
        assert d.run(".parameter set v 41 + 1") == ""
        assert d.run("SELECT $v") == ""
        assert d.out.getvalue().splitlines()[-1] == "42"
    finally:
        d.close()
    assert_intact(before, snapshot(adb))


def test_import_is_recorded_and_cannot_write_the_log(tmp_path, adb):
    rows = tmp_path / "rows.csv"
    rows.write_text("7,seven\n8,eight\n")
    before = snapshot(adb)
    d = Driven(adb)
    try:
        assert d.run(".mode csv") == ""
        assert d.run(f".import {rows} t") == ""
        # Into the log itself: the audit layer denies it (and records the attempt).
        err = d.run(f".import {rows} {adb.table}")
        assert err.startswith("Error:"), err
        err = d.run(f".autoimport {rows} newtable")
        assert err.startswith(f"Error: .autoimport {REFUSED}"), err
    finally:
        d.close()
    after = snapshot(adb)
    assert after.rows == before.rows + [(7, "seven"), (8, "eight")]
    assert_intact(dataclasses.replace(before, rows=after.rows), after)
    new = after.events[len(before.events):]
    assert ("mallory", "INSERT", "t", 1) in [e[1:5] for e in new]
    assert any(e[1] == "mallory" and e[4] == 0 and e[2] == "INSERT" for e in new)  # denied
    assert len(after.refused(".autoimport")) == 1
    conn = adb.connect()
    try:
        assert not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'newtable'").fetchall()
    finally:
        conn.close()


def test_read_of_a_sql_script_is_audited_line_by_line(tmp_path, adb):
    script = tmp_path / "script.sql"
    script.write_text("INSERT INTO t VALUES (3, 'three');\n.dbconfig writable_schema 1\n"
                      f"DELETE FROM sqlite_master WHERE name LIKE '{adb.table}%';\n")
    before = snapshot(adb)
    d, errors = driven_attack(adb, [f".read {script}"])
    assert ".dbconfig writable_schema " + REFUSED in errors[0]
    after = snapshot(adb)
    assert after.rows == before.rows + [(3, "three")]
    assert_intact(dataclasses.replace(before, rows=after.rows), after)
    new = after.events[len(before.events):]
    assert ("mallory", "INSERT", "t", 1) in [e[1:5] for e in new]
    assert len(after.refused(".dbconfig")) == 1


def test_switching_to_a_raw_connection_is_refused(adb):
    before = snapshot(adb)
    # A second, unaudited connection to the same file in this process (as a .py or an
    # embedding application could make): .connection must not switch the shell to it.
    raw = heliosdb.connect(str(adb.path), key=adb.key, isolation_level=None)
    d = Driven(adb)
    try:
        dbs = [c for c in apsw.connections() if c]
        index = next(i for i, c in enumerate(dbs) if c is raw._apsw)
        assert d.run(".connection") == ""  # listing is fine
        err = d.run(f".connection {index}")
        assert err.startswith(f"Error: .connection {REFUSED}"), err
        assert d.shell.audited
        assert d.run("INSERT INTO t VALUES (4, 'four')") == ""
    finally:
        d.close()
        raw.close()
    after = snapshot(adb)
    assert after.rows == before.rows + [(4, "four")]
    new = after.events[len(before.events):]
    assert ("mallory", "INSERT", "t", 1) in [e[1:5] for e in new]
    assert len(after.refused(".connection")) == 1


def test_output_and_read_only_commands_still_work(tmp_path, adb):
    d = Driven(adb)
    try:
        assert d.run(f".output {tmp_path / 'out.txt'}") == ""
        assert d.run("SELECT b FROM t WHERE a = 2") == ""
        assert d.run(".output stdout") == ""
        assert (tmp_path / "out.txt").read_text() == "two\n"
        for command in (".mode csv", ".headers on", ".nullvalue NULL", ".tables", ".schema t",
                        ".dump t", ".dbinfo", ".limit", ".limit length -1", ".show",
                        ".print hello", ".vfslist", ".indices t", ".databases",
                        ".find two", f".cd {tmp_path}", ".changes on", ".timer off"):
            assert "Error" not in d.run(command), command  # (.show writes to stderr)
        out = d.out.getvalue()
        assert "CREATE TABLE t(a INTEGER, b TEXT)" in out and "hello" in out
        assert d.shell.error_count == 0
    finally:
        d.close()


# --------------------------------------------------------------------------------------------
# Safe by default: commands nobody classified
# --------------------------------------------------------------------------------------------


class ShellWithNewCommand(HeliosShell):
    def command_frob(self, cmd: list[str]) -> None:
        """frob: A command added later that writes on the raw connection"""
        self.db.execute("INSERT INTO t VALUES (42, 'frobbed')")


def test_unclassified_command_is_refused_on_an_audited_database(adb, tmp_path):
    before = snapshot(adb)
    d = Driven(adb, shell_class=ShellWithNewCommand)
    try:
        err = d.run(".frob")
        assert err.startswith(f"Error: .frob {REFUSED}"), err
    finally:
        d.close()
    after = snapshot(adb)
    assert_intact(before, after)
    assert len(after.refused(".frob")) == 1
    # On a database without an audit log it runs.
    plain = tmp_path / "noaudit.db"
    with sqlite3.connect(plain) as c:
        c.execute("CREATE TABLE t(a INTEGER, b TEXT)")
    c.close()
    conn = heliosdb.connect(str(plain), isolation_level=None)
    shell = ShellWithNewCommand(conn, Opener(), stdin=io.StringIO(""), stdout=io.StringIO(),
                                stderr=io.StringIO())
    _run_one(shell, ".frob")
    shell.close()
    assert shell.error_count == 0
    with sqlite3.connect(plain) as c:
        assert c.execute("SELECT a FROM t").fetchall() == [(42,)]
    c.close()


def test_every_apsw_command_is_harmless_checked_or_refused():
    assert not AUDIT_HARMLESS & AUDIT_CHECKED
    for name in dir(apsw.shell.Shell):
        if not name.startswith("command_"):
            continue
        short = name[len("command_"):]
        method = getattr(HeliosShell, name)
        refused = getattr(method, "_heliosdb_refused_when_audited", False)
        assert (short in AUDIT_HARMLESS) + (short in AUDIT_CHECKED) + refused == 1, name
        # The docstring is the help text: wrapping keeps it.
        assert method.__doc__ == getattr(apsw.shell.Shell, name).__doc__ or \
            name in HeliosShell.__dict__, name
    for name in ("load", "py", "shell"):
        assert getattr(HeliosShell, "command_" + name)._heliosdb_refused_when_audited


def test_nothing_is_refused_on_a_database_without_an_audit_log(tmp_path, capsys):
    plain = tmp_path / "noaudit.db"
    conn = heliosdb.connect(str(plain), isolation_level=None)
    out, err = io.StringIO(), io.StringIO()
    shell = HeliosShell(conn, Opener(), stdin=io.StringIO(""), stdout=out, stderr=err)
    assert not shell.audit_guarded()
    for command in (".dbconfig writable_schema 1", ".limit length 5000", ".py print(6 * 7)"):
        _run_one(shell, command)
    try:
        assert err.getvalue() == ""
        assert shell.db.config(apsw.SQLITE_DBCONFIG_WRITABLE_SCHEMA, -1) == 1
        assert shell.db.limit(apsw.SQLITE_LIMIT_LENGTH, -1) == 5000
        assert capsys.readouterr().out.strip() == "42"  # .py prints to the real stdout
    finally:
        shell.close()


# --------------------------------------------------------------------------------------------
# Opening: never with a config that would not write the database's log
# --------------------------------------------------------------------------------------------


def _tables(db: AuditedDB) -> set:
    conn = heliosdb.connect(str(db.path), key=db.key, isolation_level=None)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    finally:
        conn.close()


def test_a_config_that_misses_the_log_runs_under_the_stored_policy(tmp_path, adb):
    """--config naming another log (or the default one for a renamed log) cannot move or
    skip the log: the connection runs under the policy stored in the file, and no second
    log is created (issue 15: an audited database stays audited)."""
    before = snapshot(adb)
    tables = _tables(adb)
    other = tmp_path / "other.toml"
    other.write_text('extends = "default"\n\n[audit]\ntable_name = "another_log"\n')
    wrong = "default" if adb.table != "__audit_log" else str(other)
    args = ["--key-file", str(adb.keyfile)] if adb.keyfile else []
    proc = run_cli([*args, "--config", wrong, str(adb.path),
                    f"DELETE FROM {adb.table}"], cwd=tmp_path)
    assert proc.returncode == 1 and "append-only" in proc.stderr
    assert _tables(adb) == tables  # no second log was created
    after = snapshot(adb)
    assert_intact(before, after)
    assert ("DELETE", 0) in [(e[2], e[4]) for e in after.events[len(before.events):]]
    conn = _connect_checked(Opener(key=adb.keyspec, config=wrong, prompt_if_needed=False),
                            str(adb.path))
    try:
        assert conn.audit.table == adb.table
    finally:
        conn.close()
    assert _tables(adb) == tables


def test_audited_file_is_not_restored_into_an_unaudited_database(tmp_path, adb):
    if adb.key is not None:
        pytest.skip("the plaintext variants cover it (restore needs matching encryption)")
    target = tmp_path / "scratch.db"
    conn = heliosdb.connect(str(target), isolation_level=None)
    shell = HeliosShell(conn, Opener(), stdin=io.StringIO(""), stdout=io.StringIO(),
                        stderr=(err := io.StringIO()))
    _run_one(shell, f".restore {adb.path}")
    _run_one(shell, f".open --new {adb.path}")
    shell.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"Error: .restore of {adb.path} is refused")
    assert lines[1].startswith(f"Error: .open --new {adb.path} is refused")
    assert adb.table in _tables(adb)
    assert snapshot(adb).verified


def test_database_file_is_recognised_after_cd(tmp_path, adb):
    """Opened by a relative name, then .cd elsewhere: the file is still recognised."""
    (tmp_path / "sub").mkdir()
    before = snapshot(adb)
    proc = run_cli([*adb.cli_args, ":memory:", f".open {adb.path.name}", ".cd sub",
                    f".output ../{adb.path.name}", "SELECT 'overwritten?'"],
                   cwd=adb.path.parent)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Error: .output ../{adb.path.name} {REFUSED}"), proc.stderr
    after = snapshot(adb)
    assert_intact(before, after)
    assert len(after.refused(".output")) == 1
