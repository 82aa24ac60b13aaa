"""`make demo` runs `python -m heliosdb demo`: it must keep working end to end."""
import subprocess
import sys

import pytest

import heliosdb


@pytest.mark.skipif(not heliosdb.native_available(), reason="the demo encrypts: needs the C VFS")
def test_demo_runs_end_to_end(tmp_path):
    p = subprocess.run([sys.executable, "-m", "heliosdb", "demo", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "Demo finished: OK" in out
    assert "plaintext marker found: True" not in out
    assert "WrongKeyError" in out and "KeyRequiredError" in out
    assert "fault=modified" in out
    # The demo's database is left in --dir, and holds no plaintext.
    data = (tmp_path / "clinic.db").read_bytes()
    assert b"Ada Lovelace" not in data and b"SQLite format 3" not in data
