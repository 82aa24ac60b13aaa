"""The ``heliosdb`` shell at a terminal: each session runs under a pseudo-terminal (its
controlling terminal), so the key prompt (getpass on /dev/tty), readline history and
the progress bar behave as they do for a person at a keyboard.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

import heliosdb
from helpers.cli import HELIOSDB, Pty, cli_env
from helpers.sample_dbs import make_encrypted_db

PASSPHRASE = "correct horse battery staple"


def _env(tmp_path):
    env = cli_env(tmp_path, TERM="xterm")
    env.pop("NO_COLOR", None)
    return env


@pytest.fixture
def passphrase_db(tmp_path):
    """An encrypted database under PASSPHRASE, one row."""
    return make_encrypted_db(tmp_path / "secret.db", PASSPHRASE, "CREATE TABLE s(x TEXT)",
                             "INSERT INTO s VALUES ('behind the key')")


def test_interactive_session_with_key_prompt(tmp_path, passphrase_db):
    term = Pty([*HELIOSDB, str(passphrase_db)], cwd=tmp_path, env=_env(tmp_path))
    term.expect(f"Passphrase or 64-hex key for {passphrase_db}: ")
    term.send(PASSPHRASE + "\n")
    banner = term.expect("heliosdb> ")
    assert "HeliosDB" in banner and "encrypted" in banner
    term.send("SELECT x FROM s;\n")
    assert "behind the key" in term.expect("heliosdb> ")
    term.send(".tables\n")
    assert "s" in term.expect("heliosdb> ").split()
    term.send(".quit\n")
    assert term.wait() == 0
    # The passphrase was never echoed, and never reached the history file.
    assert PASSPHRASE not in term.text
    history = tmp_path / ".heliosdb_history"
    assert history.exists()
    text = history.read_text()
    assert "SELECT x FROM s;" in text and PASSPHRASE not in text
    assert (history.stat().st_mode & 0o077) == 0  # private to its owner


def test_interactive_wrong_passphrase(tmp_path, passphrase_db):
    term = Pty([*HELIOSDB, str(passphrase_db)], cwd=tmp_path, env=_env(tmp_path))
    term.expect("Passphrase or 64-hex key for")
    term.send("not the passphrase\n")
    assert term.wait() == 2
    assert "wrong key" in term.text and "Traceback" not in term.text


def test_key_option_prompts_and_piped_sql_runs(tmp_path, passphrase_db):
    """-k prompts on the terminal even when standard input is a pipe of SQL."""
    # stdin is a pipe, the terminal is the controlling tty: getpass reads /dev/tty.
    script = (
        "import os, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], input='SELECT x FROM s;\\n', text=True,\n"
        "                   capture_output=True)\n"
        "sys.stdout.write('OUT[' + p.stdout + ']RC[' + str(p.returncode) + ']\\n')\n"
        "sys.stdout.write('ERR[' + p.stderr + ']\\n')\n"
    )
    term = Pty([sys.executable, "-c", script, *HELIOSDB, "-k", str(passphrase_db)],
               cwd=tmp_path, env=_env(tmp_path))
    term.expect("Passphrase or 64-hex key for")
    term.send(PASSPHRASE + "\n")
    out = term.expect("]RC[0]")
    assert "behind the key" in out
    assert term.wait() == 0
    assert PASSPHRASE not in term.text


def test_errors_completion_and_exit_status(tmp_path):
    db = tmp_path / "plain.db"
    term = Pty([*HELIOSDB, "--create", str(db)], cwd=tmp_path, env=_env(tmp_path))
    term.expect("heliosdb> ")
    term.send("SELECT * FROM nosuch;\n")
    assert "no such table: nosuch" in term.expect("heliosdb> ")
    term.send(".verify\n")
    assert "no audit log" in term.expect("heliosdb> ")
    term.send("CREATE TABLE t(a);\n")
    term.expect("heliosdb> ")
    term.send(".encr\t")  # tab completion of HeliosDB's dot-commands
    term.expect("yption ")
    term.send("\n")
    assert "encryption_enabled" in term.expect("heliosdb> ")
    term.send(".exit 3\n")
    assert term.wait() == 3  # interactive errors do not change the status; .exit N does
    assert "Traceback" not in term.text


def test_progress_bar_on_terminal_silent_when_piped(tmp_path):
    code = (
        "from heliosdb.progress import progress_callback\n"
        "with progress_callback(None, 'Crunching pages') as cb:\n"
        "    for i in range(1, 6):\n"
        "        cb(i, 5)\n"
        "print('done', cb.done, cb.total)\n"
    )
    term = Pty([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path))
    term.expect("done 5 5")
    assert term.wait() == 0
    assert "Crunching pages" in term.text

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(tmp_path), stdin=subprocess.DEVNULL,
                          start_new_session=True)
    assert proc.returncode == 0
    assert proc.stdout == "done 5 5\n" and proc.stderr == ""


def test_new_database_passphrase_is_asked_twice(tmp_path):
    if not heliosdb.native_available():
        pytest.skip("the encryption extension is not built here")
    db = tmp_path / "new.db"
    term = Pty([*HELIOSDB, "--create", "-k", str(db)], cwd=tmp_path, env=_env(tmp_path))
    term.expect("New passphrase or 64-hex key for")
    term.send(PASSPHRASE + "\n")
    term.expect("Repeat the new passphrase")
    term.send(PASSPHRASE + "\n")
    term.expect("heliosdb> ")
    term.send("CREATE TABLE t(a); INSERT INTO t VALUES (42);\n")
    term.expect("heliosdb> ")
    term.send(".quit\n")
    assert term.wait() == 0
    assert PASSPHRASE not in term.text
    conn = heliosdb.connect(str(db), key=PASSPHRASE)
    assert conn.execute("SELECT a FROM t").fetchall() == [(42,)]
    conn.close()

    other = tmp_path / "typo.db"
    term = Pty([*HELIOSDB, "--create", "-k", str(other)], cwd=tmp_path, env=_env(tmp_path))
    term.expect("New passphrase or 64-hex key for")
    term.send("first try\n")
    term.expect("Repeat the new passphrase")
    term.send("first tyr\n")
    assert term.wait() == 2
    assert "do not match" in term.text and not other.exists()


def test_dot_passwd_at_the_terminal(tmp_path, passphrase_db):
    from heliosdb.cli.common import Unavailable, heliosdb_api

    try:
        heliosdb_api("change_passphrase", ".passwd")
    except Unavailable:
        pytest.skip("heliosdb.change_passphrase is not in this build "
                    "(test_cli.py checks the 'not available' error)")
    new = "a brand new passphrase"
    term = Pty([*HELIOSDB, "-k", str(passphrase_db)], cwd=tmp_path, env=_env(tmp_path))
    term.expect("Passphrase or 64-hex key for")
    term.send(PASSPHRASE + "\n")
    term.expect("heliosdb> ")
    term.send(".passwd\n")
    term.expect("Current passphrase or 64-hex key for")
    term.send(PASSPHRASE + "\n")
    term.expect("New passphrase or 64-hex key for")
    term.send(new + "\n")
    term.expect("Repeat the new passphrase")
    term.send(new + "\n")
    assert "passphrase changed" in term.expect("heliosdb> ")
    term.send(".quit\n")
    assert term.wait() == 0
    assert PASSPHRASE not in term.text and new not in term.text
    history = (tmp_path / ".heliosdb_history").read_text()
    assert new not in history and PASSPHRASE not in history
    conn = heliosdb.connect(str(passphrase_db), key=new)
    assert conn.execute("SELECT x FROM s").fetchall() == [("behind the key",)]
    conn.close()
    with pytest.raises(heliosdb.WrongKeyError):
        heliosdb.connect(str(passphrase_db), key=PASSPHRASE)


def test_prompt_takes_a_raw_64_hex_key(tmp_path):
    """A database made with a raw key opens at the prompt with the key as 64 hex digits;
    a passphrase typed for it is refused with what was tried."""
    raw = bytes(range(32))
    path = make_encrypted_db(tmp_path / "raw.db", raw, "CREATE TABLE r(x)",
                             "INSERT INTO r VALUES ('raw key data')")
    term = Pty([*HELIOSDB, str(path), "SELECT x FROM r"], cwd=tmp_path, env=_env(tmp_path))
    term.expect(f"Passphrase or 64-hex key for {path}: ")
    term.send(raw.hex() + "\n")
    assert term.wait() == 0
    assert "raw key data" in term.text and "as a raw 64-hex key" in term.text
    assert raw.hex() not in term.text  # never echoed

    term = Pty([*HELIOSDB, str(path), "SELECT x FROM r"], cwd=tmp_path, env=_env(tmp_path))
    term.expect("Passphrase or 64-hex key for")
    term.send("a passphrase\n")
    assert term.wait() == 2
    assert "wrong key for" in term.text and "not a 64-hex raw key" in term.text
    assert "raw key data" not in term.text
