"""``heliosdb prove`` and ``conn.audit.prove_*``: proofs made from a database, checked
with the signer's key; a tampered proof or another key is exit status 1."""
from __future__ import annotations

import json
import os

import pytest

import heliosdb

from helpers.cli import run_cli
from helpers.readme import readme_example, run_example


@pytest.fixture
def db_and_checkpoints(tmp_path):
    path = tmp_path / "a.db"
    conn = heliosdb.connect(str(path), config="default", audit_user="alice",
                            isolation_level=None)
    conn.execute("CREATE TABLE t(a, b)")
    for i in range(10):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, str(i)))
    key = os.urandom(32)
    (tmp_path / "k.hex").write_text(key.hex())
    cp1 = conn.audit.checkpoint(key, str(tmp_path / "cp1.checkpoint"))
    for i in range(7):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, str(i)))
    cp2 = conn.audit.checkpoint(key, str(tmp_path / "cp2.checkpoint"))
    # The Python API: JSON-serialisable dicts that verify.
    from heliosdb.audit import merkle
    p = conn.audit.prove_inclusion(3, cp2)
    assert merkle.check_inclusion(json.loads(json.dumps(p)), hmac_key=key)["ok"]
    c = conn.audit.prove_consistency(str(tmp_path / "cp1.checkpoint"), cp2)
    assert merkle.check_consistency(c, hmac_key=key)["ok"]
    assert conn.audit.verify_since(cp1, hmac_key=key).ok
    conn.close()
    return path, cp1, cp2


def test_prove_and_check_from_the_command_line(tmp_path, db_and_checkpoints):
    path, cp1, cp2 = db_and_checkpoints
    proc = run_cli(["prove", "inclusion", str(path), "--event", "5", "--checkpoint",
                    "cp2.checkpoint", "--out", "inc.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["prove", "consistency", str(path), "--old", "cp1.checkpoint", "--new",
                    "cp2.checkpoint", "--out", "con.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, says in (("inc.json", "event 5 is in the tree"), ("con.json", "extends")):
        proc = run_cli(["prove", "check", name, "--verify-key", "k.hex"], cwd=tmp_path)
        assert proc.returncode == 0 and says in proc.stdout, proc.stdout + proc.stderr
        # Without the signer's key: refused, never "OK".
        proc = run_cli(["prove", "check", name], cwd=tmp_path)
        assert proc.returncode == 1 and "OK" not in proc.stdout
        # Another key: the signature fails.
        (tmp_path / "other.hex").write_text(os.urandom(32).hex())
        proc = run_cli(["prove", "check", name, "--verify-key", "other.hex"], cwd=tmp_path)
        assert proc.returncode == 1 and "FAILED" in proc.stdout
    # A tampered proof (a changed event field) fails.
    p = json.loads((tmp_path / "inc.json").read_text())
    p["event"]["user"] = "mallory"
    (tmp_path / "bad.json").write_text(json.dumps(p))
    proc = run_cli(["prove", "check", "bad.json", "--verify-key", "k.hex"], cwd=tmp_path)
    assert proc.returncode == 1 and "FAILED" in proc.stdout
    # An event outside the signed tree: an error, not a proof.
    proc = run_cli(["prove", "inclusion", str(path), "--event", str(cp2.tree_size + 1),
                    "--checkpoint", "cp2.checkpoint"], cwd=tmp_path)
    assert proc.returncode == 1 and "not in the tree" in proc.stderr and not proc.stdout


def test_readme_proof_example_output(tmp_path):
    """README's "Proofs an auditor checks without us": the code prints what is shown."""
    code, printed = readme_example("### Proofs an auditor checks without us")
    assert run_example(code, tmp_path) == printed
