"""Exports carry the signed tree; the stdlib proof checker of docs/EXPORT_FORMAT.md runs
on real proofs and agrees with the independent RFC 6962/9162 reference of
tests/test_audit_merkle.py."""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from heliosdb.audit import merkle, store
from heliosdb.audit.checkpoint import create_checkpoint
from heliosdb.audit.export import export_events, verify_export

from helpers.audit_log import TABLE, make_log, sample_events
from test_audit_merkle import (_leaves_of, ref_mth, ref_path, ref_proof,
                               ref_verify_consistency, ref_verify_inclusion)

KEY = b"e" * 32
DOC = Path(__file__).resolve().parent.parent / "docs" / "EXPORT_FORMAT.md"


def _script(tmp_path) -> Path:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- proof-script-begin -->\n```python\n(.*?)```\n<!-- proof-script-end -->",
                  text, re.S)
    assert m, "the proof script is missing from docs/EXPORT_FORMAT.md"
    p = tmp_path / "check_proof.py"
    p.write_text(m.group(1))
    return p


def _run(script, proof: dict, tmp_path, key=KEY):
    f = tmp_path / "proof.json"
    f.write_text(json.dumps(proof))
    args = [sys.executable, "-I", str(script), str(f)] + ([key.hex()] if key else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_checkpoints(tmp_path):
    conn = make_log(str(tmp_path / "a.db"), 21)
    cp1 = create_checkpoint(conn, TABLE, KEY)
    store.append(conn, TABLE, sample_events(16, 21))
    cp2 = create_checkpoint(conn, TABLE, KEY)
    return conn, cp1, cp2


def test_stdlib_script_checks_inclusion_and_consistency(tmp_path, two_checkpoints):
    conn, cp1, cp2 = two_checkpoints
    script = _script(tmp_path)
    d = _leaves_of(conn)
    for eid in (1, 2, 21, 22, 37):
        p = merkle.prove_inclusion(conn, TABLE, eid, cp2)
        # the independent reference agrees on the path and accepts it
        assert p["audit_path"] == [h.hex() for h in ref_path(eid - 1, d)]
        assert ref_verify_inclusion(eid - 1, 37, bytes.fromhex(p["leaf_hash"]),
                                    [bytes.fromhex(h) for h in p["audit_path"]], ref_mth(d))
        r = _run(script, p, tmp_path)
        assert r.returncode == 0 and r.stdout.startswith(f"OK: event {eid} is in the tree"), \
            r.stdout + r.stderr
        assert "(signature checked)" in r.stdout
    c = merkle.prove_consistency(conn, TABLE, cp1, cp2)
    assert c["proof"] == [h.hex() for h in ref_proof(21, d)]
    assert ref_verify_consistency(21, 37, ref_mth(d[:21]), ref_mth(d),
                                  [bytes.fromhex(h) for h in c["proof"]])
    r = _run(script, c, tmp_path)
    assert r.returncode == 0 and "extends the tree of 21 events" in r.stdout, r.stderr
    # Same size: an empty proof.
    same = merkle.prove_consistency(conn, TABLE, cp2, cp2)
    assert same["proof"] == [] and _run(script, same, tmp_path).returncode == 0


def test_stdlib_script_refuses_tampered_proofs(tmp_path, two_checkpoints):
    conn, cp1, cp2 = two_checkpoints
    script = _script(tmp_path)
    p = merkle.prove_inclusion(conn, TABLE, 5, cp2)
    c = merkle.prove_consistency(conn, TABLE, cp1, cp2)
    bad = []
    q = json.loads(json.dumps(p)); q["event"]["query"] = "DROP TABLE x"; bad.append(q)
    q = json.loads(json.dumps(p)); q["event"]["id"] = 6; bad.append(q)
    q = json.loads(json.dumps(p)); q["audit_path"][1] = "00" * 32; bad.append(q)
    q = json.loads(json.dumps(p)); q["audit_path"] = q["audit_path"][:-1]; bad.append(q)
    q = json.loads(json.dumps(p))
    q["checkpoint"] = q["checkpoint"].replace(f"root_hash: {cp2.root_hash.hex()}",
                                              "root_hash: " + "11" * 32)
    bad.append(q)  # a re-rooted checkpoint: its signature fails
    q = json.loads(json.dumps(c)); q["proof"][0] = "22" * 32; bad.append(q)
    q = json.loads(json.dumps(c)); q["proof"].append("33" * 32); bad.append(q)
    for q in bad:
        r = _run(script, q, tmp_path)
        assert r.returncode != 0 and "AssertionError" in r.stderr, (q, r.stdout)
        with pytest.raises(merkle.MerkleProofError):
            merkle.check_proof(q, hmac_key=KEY)
    # Another key: the signature check fails.
    r = _run(script, p, tmp_path, key=b"x" * 32)
    assert r.returncode != 0 and "bad checkpoint signature" in r.stderr


def test_export_carries_the_signed_tree(tmp_path, two_checkpoints):
    conn, cp1, cp2 = two_checkpoints
    full = tmp_path / "full.jsonl"
    m = export_events(conn, TABLE, full, checkpoint=cp2)
    h = m.header
    assert (h["checkpoint"]["tree_size"], h["checkpoint"]["root_hash"]) == \
        (cp2.tree_size, cp2.root_hash.hex())
    assert h["tree_frontier"] == []
    assert verify_export(full, hmac_key=KEY).ok
    # Incremental: the frontier of the events before the export.
    inc = tmp_path / "inc.jsonl.gz"
    m2 = export_events(conn, TABLE, inc, after_id=21, checkpoint=cp2)
    fr = b"".join(bytes.fromhex(x) for x in m2.header["tree_frontier"])
    assert merkle.root(fr) == ref_mth(_leaves_of(conn)[:21])
    rep = verify_export(inc, hmac_key=KEY)
    assert rep.ok, rep.message
    # A wrong frontier in the header cannot reproduce the signed root.
    lines = gzip.decompress(inc.read_bytes()).decode().splitlines()
    head = json.loads(lines[0])
    head["tree_frontier"][0] = "44" * 32
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    rep = verify_export(bad, hmac_key=KEY)
    assert not rep.ok and rep.fault == "checkpoint_mismatch" and "Merkle root" in rep.message
    # The header's copy of the signed root altered: it must agree with the signed text.
    head = json.loads(lines[0])
    head["checkpoint"]["root_hash"] = "55" * 32
    bad.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    rep = verify_export(bad, hmac_key=KEY)
    assert not rep.ok and rep.fault == "checkpoint_mismatch"
