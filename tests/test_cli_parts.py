"""The pure parts of the command line, in-process: statement splitting, filters and times,
report lines, error lines and exit codes, the progress helper when not on a terminal."""
from __future__ import annotations

import datetime as dt
import io

import apsw
import pytest

import heliosdb
from heliosdb.cli.common import (
    CLIError,
    Unavailable,
    error_message,
    exit_code_for,
    format_pages_report,
    format_verify_report,
    parse_audit_filters,
    parse_when,
)
from heliosdb.progress import progress_callback
from heliosdb.cli.shell import _explain_kind, parse_shell_args, split_sql

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def test_split_sql_respects_strings_comments_and_triggers():
    sql = ("INSERT INTO t VALUES ('a;b'); -- a comment; with a semicolon\n"
           "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;\n"
           "/* only a comment */ ;  SELECT \"x;y\" FROM t")
    parts = split_sql(sql)
    assert len(parts) == 3
    assert parts[0].strip() == "INSERT INTO t VALUES ('a;b');"
    assert "END;" in parts[1] and parts[1].count("SELECT") == 2
    assert parts[2].strip() == 'SELECT "x;y" FROM t'
    assert split_sql("  -- nothing\n ;") == []
    assert _explain_kind("explain query plan select 1") == 2
    assert _explain_kind("/* c */ EXPLAIN select 1") == 1
    assert _explain_kind("select 'explain'") == 0


def test_parse_when_and_filters():
    assert parse_when("7d", now=NOW) == NOW - dt.timedelta(days=7)
    assert parse_when("90m", now=NOW) == NOW - dt.timedelta(minutes=90)
    assert parse_when("2026-01-31") == dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc)
    assert parse_when("2026-01-31T10:00+02:00").hour == 8
    with pytest.raises(CLIError, match="bad time"):
        parse_when("last tuesday")
    f = parse_audit_filters(["user=alice", "op=insert", "failed", "limit=5", "target=t"])
    assert f == {"user": "alice", "op": "INSERT", "success": False, "limit": 5, "table": "t"}
    for bad in (["colour=red"], ["limit=x"], ["limit=-1"], ["user="], ["success=maybe"]):
        with pytest.raises(CLIError) as info:
            parse_audit_filters(bad)
        assert info.value.code == 2


def test_report_lines():
    from heliosdb.audit.verify import VerifyReport

    ok = VerifyReport(ok=True, events_checked=3, first_bad_id=None, fault=None,
                      message="3 event(s) verified")
    bad = VerifyReport(ok=False, events_checked=1, first_bad_id=2, fault="modified",
                       message="event 2 does not match its checksum")
    assert format_verify_report(ok) == "audit log: OK: 3 event(s) verified"
    assert format_verify_report(bad) == ("audit log: FAILED: modified at event 2 after 1 "
                                         "events: event 2 does not match its checksum")
    assert format_pages_report({"ok": True, "pages_checked": 10}) == \
        "pages: OK, 10 pages authenticated"
    assert format_pages_report({"ok": False, "bad_pages": [3, 7], "message": "tampered"}) == \
        "pages: FAILED: 2 bad page(s): 3, 7 tampered"


def test_errors_are_one_line_with_exit_codes():
    try:
        apsw.Connection(":memory:").execute("SELECT * FROM nosuch")
    except apsw.Error as exc:
        assert error_message(exc) == "no such table: nosuch"  # no "SQLError:" prefix
        assert exit_code_for(exc) == 1
    assert exit_code_for(heliosdb.WrongKeyError("x")) == 2
    assert exit_code_for(heliosdb.ConfigError("x")) == 2
    assert exit_code_for(FileNotFoundError(2, "No such file", "a.db")) == 2
    assert error_message(FileNotFoundError(2, "No such file", "a.db")) == "a.db: No such file"
    assert exit_code_for(heliosdb.OperationalError("disk I/O error")) == 1
    u = Unavailable("heliosdb rekey", "heliosdb.rotate_key is missing")
    assert str(u) == "heliosdb rekey is not available: heliosdb.rotate_key is missing"
    assert exit_code_for(u) == 2
    assert error_message(ValueError("two\nlines")) == "two lines"


def test_shell_arguments_split():
    a = parse_shell_args(["-k", "--config", "hipaa", "-json", "-separator", ";", "-cmd",
                          ".headers on", "db.sqlite", "SELECT 1", "-box", "--user", "ann",
                          "--", "-not-an-option"])
    assert a.opener.key.kind == "prompt" and a.opener.config == "hipaa"
    # Options may follow FILE, as in the sqlite3 shell; "--" ends them.
    assert a.apsw_options == ["-json", "-separator", ";", "-box"]
    assert a.opener.user == "ann"
    assert a.cmds == [".headers on"] and a.filename == "db.sqlite"
    assert a.commands == ["SELECT 1", "-not-an-option"]
    a = parse_shell_args(["--key-file=k.bin", "--user", "bob"])
    assert (a.opener.key.kind, a.opener.key.value, a.opener.user) == ("file", "k.bin", "bob")
    assert a.filename == ""
    with pytest.raises(CLIError, match="never given"):
        parse_shell_args(["-k=secret", "x.db"])


def test_progress_is_silent_off_a_terminal():
    stream = io.StringIO()
    with progress_callback(None, "Working", stream=stream) as cb:
        for i in range(1, 4):
            cb(i, 3)
        cb(2)  # never goes backwards
    assert (cb.done, cb.total, cb.enabled) == (3, 3, False)
    assert stream.getvalue() == ""


@pytest.mark.skipif(not heliosdb.native_available(), reason="no encryption extension here")
def test_dot_rekey_closes_rotates_and_reopens(tmp_path, monkeypatch):
    """The plumbing around heliosdb.rotate_key (whose tests live with it): .rekey closes the
    database, calls rotate_key(path, key, progress=...) with the open key, reopens the file
    with that key, and wipes the key afterwards."""
    from heliosdb.cli.common import KeySpec, Opener
    from heliosdb.cli.shell import HeliosShell

    keyfile = tmp_path / "k.bin"
    keyfile.write_bytes(bytes(range(32)))
    path = str(tmp_path / "r.db")
    conn = heliosdb.connect(path, key=keyfile.read_bytes())
    conn.execute("CREATE TABLE s(x)")
    conn.execute("INSERT INTO s VALUES ('kept')")
    conn.commit()
    conn.close()

    calls = []

    def rotate_key(p, key, new_key=None, progress=None):
        calls.append((p, key.closed, callable(progress), key))
        progress(1, 1)

    monkeypatch.setattr(heliosdb, "rotate_key", rotate_key, raising=False)
    opener = Opener(key=KeySpec("file", str(keyfile)))
    out, err = io.StringIO(), io.StringIO()
    shell = HeliosShell(opener.connect(path), opener, stdout=out, stderr=err)
    shell.process_complete_line(".rekey")
    shell.process_complete_line("SELECT x FROM s;")
    shell.close()
    assert len(calls) == 1
    rotated_path, closed_during, had_progress, key = calls[0]
    assert rotated_path == path and not closed_during and had_progress
    assert key.closed  # wiped once the command finished
    assert out.getvalue().splitlines() == [f"data key rotated for {path}", "kept"], err.getvalue()
