"""Issue 19: the command-line transcripts in README.md ("The command line") and
docs/CLI.md are what the commands print. Each ``$ `` line is run with bash in a fresh
directory (``heliosdb`` from this venv on PATH) and its output, standard error included,
compared with the lines under it; only timestamps, a random file id and the directory
are normalised.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import heliosdb
from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parent.parent
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def _norm(text: str) -> str:
    return _TS.sub(lambda m: "T" * len(m.group(0)), text)


def _transcript(block: str) -> list[tuple[str, str]]:
    """[(command, expected output)] of a ``$ ``-transcript code block."""
    steps: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd + "\n" + lines[i]
            steps.append((cmd, []))
        else:
            steps[-1][1].append(line)
        i += 1
    return [(c, "\n".join(out)) for c, out in steps]


def _run(steps, cwd: Path) -> None:
    env = cli_env(cwd)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for cmd, expected in steps:
        proc = subprocess.run(["bash", "-c", cmd + " 2>&1"], cwd=str(cwd), env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120, start_new_session=True)
        assert _norm(proc.stdout.rstrip("\n")) == _norm(expected), (cmd, proc.stdout)


def _blocks(path: Path, section: str = "") -> list[str]:
    text = path.read_text()
    if section:
        text = text.split(section, 1)[1].split("\n## ", 1)[0]
    return [b for b in re.findall(r"```\n(.*?)```", text, re.S) if b.startswith("$ ")]


@pytest.mark.skipif(not heliosdb.native_available(), reason="the example is encrypted")
def test_readme_command_line_transcript(tmp_path):
    (block,) = _blocks(ROOT / "README.md", "## The command line\n")
    _run(_transcript(block), tmp_path)


def test_cli_md_error_transcript(tmp_path):
    (tmp_path / "k.key").write_bytes(bytes(range(32)))
    (tmp_path / "notes.txt").write_text("not a database\n")
    with sqlite3.connect(tmp_path / "plain.db") as c:
        c.execute("CREATE TABLE t(a)")
    c.close()
    block = next(b for b in _blocks(ROOT / "docs" / "CLI.md") if "$ heliosdb notes.db" in b)
    _run(_transcript(block), tmp_path)
    assert not (tmp_path / "notes.db").exists() and not (tmp_path / "h.db").exists()


def test_cli_md_read_only_transcript(tmp_path):
    conn = heliosdb.connect(str(tmp_path / "shop.db"), config="default",
                            isolation_level=None)
    conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO orders(total) VALUES (9.5), (12.0)")
    conn.close()
    block = next(b for b in _blocks(ROOT / "docs" / "CLI.md") if "mode=ro" in b)
    _run(_transcript(block), tmp_path)
