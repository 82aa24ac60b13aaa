"""Issue 19: every hint the command line gives names options that exist for the command
at hand, and following it works. Each test provokes a hint through the real ``heliosdb``
command, checks each option it names against that command's ``--help``, then runs the
command the hint suggests (placeholders such as FILE filled in) and checks it succeeds.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import heliosdb
from helpers.cli import assert_one_line_error, run_cli

KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


@pytest.fixture
def files(tmp_path):
    """k.key, new.key, plain.db (plaintext), audited.db (plaintext, audited), shop.db
    (encrypted with k.key, audited)."""
    if not heliosdb.native_available():
        pytest.skip("the encryption extension is not built here")
    (tmp_path / "k.key").write_bytes(KEY)
    (tmp_path / "new.key").write_bytes(NEW_KEY)
    with sqlite3.connect(tmp_path / "plain.db") as c:
        c.execute("CREATE TABLE t(a)")
        c.execute("INSERT INTO t VALUES (1)")
    c.close()
    conn = heliosdb.connect(str(tmp_path / "audited.db"), config="default",
                            isolation_level=None)
    conn.execute("CREATE TABLE t(a)")
    conn.close()
    conn = heliosdb.connect(str(tmp_path / "shop.db"), key=KEY, config="default",
                            isolation_level=None)
    conn.execute("CREATE TABLE orders(total REAL)")
    conn.execute("INSERT INTO orders VALUES (9.5)")
    conn.close()
    return tmp_path


_HELP: dict = {}


def _options_of(command: str, cwd: Path) -> set:
    """The options ``heliosdb COMMAND --help`` lists (the shell's for "")."""
    if command not in _HELP:
        proc = run_cli([command, "--help"] if command else ["--help"], cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        _HELP[command] = set(_OPTION.findall(proc.stdout))
    return _HELP[command]


def _hint(proc, code: int, command: str, cwd: Path) -> str:
    """The one error line; every option it names exists for ``command``."""
    from heliosdb.cli.commands import SUBCOMMANDS

    line = assert_one_line_error(proc, code)
    assert _OPTION.search(line), f"no option named in the hint: {line}"
    # Options after "heliosdb OTHER" in the hint belong to that other command.
    current = command
    for part in re.split(r"(heliosdb [a-z]+)", line.split(": error: ", 1)[1]):
        m = re.fullmatch(r"heliosdb ([a-z]+)", part)
        if m and m.group(1) in SUBCOMMANDS:
            current = m.group(1)
            continue
        missing = set(_OPTION.findall(part)) - _options_of(current, cwd)
        assert not missing, f"{line}: {sorted(missing)} are not options of heliosdb {current}"
    return line


@pytest.mark.parametrize("args, written, query, rows", [
    (["encrypt", "plain.db", "--out", "x.db"], "x.db", "SELECT a FROM t", [(1,)]),
    (["passwd", "shop.db", "--key-file", "k.key"], "shop.db", "SELECT total FROM orders",
     [(9.5,)]),
], ids=["encrypt", "passwd"])
def test_without_terminal_names_new_key_options_and_they_work(files, args, written, query,
                                                              rows):
    """encrypt/passwd with no terminal to ask the new key on: the hint names the file and
    --new-key-file, and following it writes ``written`` under the new key."""
    line = _hint(run_cli(args, cwd=files), 2, args[0], files)
    assert args[1] in line
    option = _OPTION.findall(line.split("use ", 1)[1])[0]
    assert option == "--new-key-file"
    proc = run_cli([*args, option, "new.key"], cwd=files)
    assert proc.returncode == 0, proc.stderr
    conn = heliosdb.connect(str(files / written), key=NEW_KEY)
    assert conn.execute(query).fetchall() == rows
    conn.close()


def test_key_on_a_plaintext_file_suggests_heliosdb_encrypt(files):
    line = _hint(run_cli(["verify", "--key-file", "k.key", "audited.db"], cwd=files), 2,
                 "verify", files)
    assert "Python" not in line and "heliosdb.connect" not in line
    # "drop --key-file k.key": without it, it verifies.
    assert "drop --key-file k.key" in line
    proc = run_cli(["verify", "audited.db"], cwd=files)
    assert proc.returncode == 0 and proc.stdout.startswith("audit log: OK"), proc.stderr
    # "... or write an encrypted copy with: heliosdb encrypt audited.db --out NEW.db ...".
    suggested = line.split("with: ", 1)[1].split()
    assert suggested[:2] == ["heliosdb", "encrypt"]
    assert set(_OPTION.findall(" ".join(suggested))) <= _options_of("encrypt", files)
    args = [{"NEW.db": "enc.db", "FILE": "new.key"}.get(w, w) for w in suggested[1:]]
    proc = run_cli(args, cwd=files)
    assert proc.returncode == 0, proc.stderr
    conn = heliosdb.connect(str(files / "enc.db"), key=NEW_KEY)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
    # The shell says the same.
    line = assert_one_line_error(run_cli(["--key-file", "k.key", "plain.db", "SELECT 1"],
                                         cwd=files), 2, "heliosdb encrypt plain.db")


@pytest.mark.parametrize("command", ["", "info -k", "verify", "audit", "export", "report",
                                     "purge", "decrypt", "rekey", "passwd"])
def test_missing_key_hint_names_options_of_that_command_and_works(files, command):
    words = command.split()
    extra = {"export": ["--format", "jsonl", "--out", "e.jsonl"],
             "report": ["--out", "r.html"], "decrypt": ["--out", "p.db"],
             "passwd": ["--new-key-file", "new.key"], "": ["SELECT count(*) FROM orders"]}
    base = words[:1] + ["shop.db"] + words[1:] + extra.get(command, [])
    proc = run_cli(base, cwd=files)
    line = _hint(proc, 2, words[0] if words else "", files)
    assert "shop.db" in line
    option = "--key-file"
    assert option in line
    followed = [w for w in base if w != "-k"] + [option, "k.key"]
    proc = run_cli(followed, cwd=files)
    assert proc.returncode in (0, 1), proc.stderr  # report: 1 means findings
    assert "error" not in proc.stderr, proc.stderr


def test_create_hint_works(files):
    line = _hint(run_cli(["notes.db", "CREATE TABLE n(x)"], cwd=files), 2, "", files)
    assert "--create" in line and "notes.db" in line
    proc = run_cli(["notes.db", "--create", "CREATE TABLE n(x)"], cwd=files)
    assert proc.returncode == 0 and (files / "notes.db").exists(), proc.stderr


def test_encryption_preset_without_key_hint_works(files):
    line = _hint(run_cli(["--config", "hipaa", "--create", "h.db", "SELECT 1"], cwd=files), 2,
                 "", files)
    assert "encrypts" in line and "config language" not in line
    proc = run_cli(["--config", "hipaa", "--create", "--key-file", "k.key", "h.db",
                    "CREATE TABLE x(a)"], cwd=files)
    assert proc.returncode == 0, proc.stderr
    assert (files / "h.db").read_bytes()[:16] != b"SQLite format 3\x00"


def test_out_exists_hint_works(files):
    (files / "x.db").write_bytes(b"old")
    line = _hint(run_cli(["encrypt", "plain.db", "--out", "x.db", "--new-key-file",
                          "new.key"], cwd=files), 2, "encrypt", files)
    assert "--force" in line
    proc = run_cli(["encrypt", "plain.db", "--out", "x.db", "--new-key-file", "new.key",
                    "--force"], cwd=files)
    assert proc.returncode == 0, proc.stderr


def test_bad_argument_hint_points_at_the_commands_help(files):
    proc = run_cli(["verify", "audited.db", "--new-key-file", "new.key"], cwd=files)
    line = assert_one_line_error(proc, 2, "unrecognized arguments")
    m = re.search(r"'(heliosdb \w+ --help)'", line)
    assert m, line
    proc = run_cli(m.group(1).split()[1:], cwd=files)
    assert proc.returncode == 0 and "--key-file" in proc.stdout
