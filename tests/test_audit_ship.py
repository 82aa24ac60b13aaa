"""Issue 21, items 2-3: ``conn.audit.ship`` / ``heliosdb ship``: incremental, resumable
shipping to a Parquet dataset or a syslog collector (TCP, TLS), verified before sending,
surviving kill -9 (Parquet exactly once, syslog at least once, in id order).

The collectors here are Python loopback servers (tests/helpers/syslog.py); the real
rsyslog is in tests/test_syslog_rsyslog.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import heliosdb
from heliosdb.audit.fleet import verify_fleet
from heliosdb.audit.ship import ShipState, parse_destination
from heliosdb.errors import AuditIntegrityError, OperationalError, ProgrammingError
from helpers.syslog import FrameCollector, make_pki, parse_message
from helpers.cli import run_cli

pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parent.parent


def make_db(path: Path, inserts: int) -> str:
    """An audited database with ``inserts`` INSERT events (plus LOGIN, CREATE_TABLE...)."""
    conn = heliosdb.connect(str(path), config="default", isolation_level=None,
                            audit_user="device")
    conn.execute("CREATE TABLE readings(v INTEGER)")
    conn.execute("BEGIN")
    for i in range(inserts):
        conn.execute("INSERT INTO readings VALUES (?)", (i,))
    conn.execute("COMMIT")
    dbid = _database_id(conn)
    conn.close()
    return dbid


def _database_id(conn) -> str:
    from heliosdb.audit.store import get_meta

    with conn.audit._internal():
        return get_meta(conn.audit._db, conn.audit.table, "database_id")


def dataset_ids(root: Path, dbid: str) -> list[int]:
    """Every event id in the database's parts, part by part in id order."""
    parts = sorted((root / f"database_id={dbid}").glob("date=*/part-*.parquet"),
                   key=lambda p: int(p.name.split("-")[1]))
    ids: list[int] = []
    for p in parts:
        ids.extend(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return ids


# --------------------------------------------------------------------------------------------
# Destinations and state
# --------------------------------------------------------------------------------------------

def test_parse_destination(tmp_path):
    d = parse_destination(f"parquet:{tmp_path}/lake")
    assert (d.kind, d.path) == ("parquet", str(tmp_path / "lake"))
    d = parse_destination("syslog+tls://logs.example.org:6514")
    assert (d.kind, d.host, d.port, d.tls) == ("syslog", "logs.example.org", 6514, True)
    d = parse_destination("syslog+tcp://[::1]:514")
    assert (d.host, d.port, d.tls, d.url) == ("::1", 514, False, "syslog+tcp://[::1]:514")
    for bad in ("s3://bucket", "syslog+udp://h:514", "syslog+tls://h", "parquet:",
                "syslog+tcp://h:70000"):
        with pytest.raises(ProgrammingError):
            parse_destination(bad)


def test_ship_parquet_incrementally(tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 120)
    lake, state = tmp_path / "lake", tmp_path / "a.state"
    conn = heliosdb.connect(str(db), config="default", isolation_level=None)
    try:
        r1 = conn.audit.ship(f"parquet:{lake}", state=state, batch_size=50)
        assert (r1.resumed_after, r1.first_id, r1.database_id) == (0, 1, dbid)
        assert r1.batches == -(-r1.count // 50) and r1.count == r1.last_id
        conn.execute("INSERT INTO readings VALUES (-1)")
        r2 = conn.audit.ship(f"parquet:{lake}", state=state, batch_size=50)
        assert (r2.resumed_after, r2.first_id, r2.count) == (r1.last_id, r1.last_id + 1, 1)
        r3 = conn.audit.ship(f"parquet:{lake}", state=state)
        assert (r3.count, r3.first_id, r3.batches) == (0, None, 0)
        n = conn.audit.query().count()
    finally:
        conn.close()
    assert dataset_ids(lake, dbid) == list(range(1, n + 1))
    st = ShipState.load(str(state))
    assert (st.last_id, st.database_id, st.destination) == (n, dbid, f"parquet:{lake}")
    rep = verify_fleet(str(lake))
    assert rep.ok and rep.databases[0].events == n
    assert not list(tmp_path.glob("*.tmp*")) and not list(lake.rglob("*.tmp*"))


def test_a_state_file_belongs_to_one_destination_and_database(tmp_path):
    make_db(tmp_path / "a.db", 5)
    make_db(tmp_path / "b.db", 5)
    state = tmp_path / "s.state"
    conn = heliosdb.connect(str(tmp_path / "a.db"), config="default", isolation_level=None)
    try:
        conn.audit.ship(f"parquet:{tmp_path}/lake", state=state)
        with pytest.raises(ProgrammingError, match="records shipping to parquet:"):
            conn.audit.ship(f"parquet:{tmp_path}/other", state=state)
    finally:
        conn.close()
    conn = heliosdb.connect(str(tmp_path / "b.db"), config="default", isolation_level=None)
    try:
        with pytest.raises(ProgrammingError, match="records shipping database"):
            conn.audit.ship(f"parquet:{tmp_path}/lake", state=state)
        # parts of b exported by hand are not the shipper's to replace
        conn.audit.export(tmp_path / "lake2", format="parquet", record=False)
        with pytest.raises(ProgrammingError, match="no state file records"):
            conn.audit.ship(f"parquet:{tmp_path}/lake2", state=tmp_path / "b.state")
    finally:
        conn.close()
    (tmp_path / "junk.state").write_text("{}")
    conn = heliosdb.connect(str(tmp_path / "a.db"), config="default", isolation_level=None)
    try:
        with pytest.raises(ProgrammingError, match="not a HeliosDB shipping state"):
            conn.audit.ship(f"parquet:{tmp_path}/lake", state=tmp_path / "junk.state")
    finally:
        conn.close()


def test_a_tampered_range_is_refused_naming_the_event(tmp_path):
    db = tmp_path / "a.db"
    make_db(db, 30)
    state = tmp_path / "a.state"
    conn = heliosdb.connect(str(db), config="default", isolation_level=None)
    try:
        conn.audit.ship(f"parquet:{tmp_path}/lake", state=state, batch_size=10)
        acked = ShipState.load(str(state)).last_id
        conn.execute("INSERT INTO readings VALUES (1)")
        conn.execute("INSERT INTO readings VALUES (2)")
        with conn.audit._internal():
            conn.audit._db.execute("UPDATE __audit_log SET user = 'mallory' WHERE id = ?",
                                   (acked + 2,))
        with pytest.raises(AuditIntegrityError, match=f"event {acked + 2}'s fields do not "
                                                      "match its checksum"):
            conn.audit.ship(f"parquet:{tmp_path}/lake", state=state, batch_size=10)
        assert ShipState.load(str(state)).last_id == acked  # nothing of that batch recorded
        # a rewrite below what was shipped is caught at the resume point
        with conn.audit._internal():
            conn.audit._db.execute("UPDATE __audit_log SET checksum = zeroblob(32) "
                                   "WHERE id = ?", (acked,))
        with pytest.raises(AuditIntegrityError, match=f"event {acked} .*no longer has the "
                                                      "checksum it was shipped with"):
            conn.audit.ship(f"parquet:{tmp_path}/lake", state=state)
    finally:
        conn.close()


def test_a_log_behind_its_state_is_refused(tmp_path):
    db = tmp_path / "a.db"
    make_db(db, 3)
    backup = tmp_path / "backup.db"
    backup.write_bytes(db.read_bytes())
    state = tmp_path / "a.state"
    conn = heliosdb.connect(str(db), config="default", isolation_level=None)
    conn.execute("INSERT INTO readings VALUES (1)")
    conn.audit.ship(f"parquet:{tmp_path}/lake", state=state)
    conn.close()
    db.write_bytes(backup.read_bytes())  # the device restored an older copy
    conn = heliosdb.connect(str(db), config="default", isolation_level=None)
    try:
        with pytest.raises(AuditIntegrityError, match="rolled back or replaced|no longer has"):
            conn.audit.ship(f"parquet:{tmp_path}/lake", state=state)
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# Syslog over TCP and TLS (a Python collector on loopback)
# --------------------------------------------------------------------------------------------

def test_ship_syslog_over_tls_with_ocsf_body_and_client_cert(tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 40)
    pki = make_pki(tmp_path / "pki", client=True)
    col = FrameCollector(pki, require_client_cert=True)
    try:
        conn = heliosdb.connect(str(db), config="default", isolation_level=None)
        try:
            r = conn.audit.ship(f"syslog+tls://localhost:{col.port}", state=tmp_path / "s",
                                ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]),
                                key_file=str(pki["client_key"]), body="ocsf", batch_size=16)
        finally:
            conn.close()
        col.wait_idle()
    finally:
        col.close()
    assert not col.errors and col.peer_certs == ["device-17"] * r.batches  # one per batch
    msgs = [parse_message(m) for m in col.messages]
    assert [m["id"] for m in msgs] == list(range(1, r.last_id + 1))
    assert {m["db"] for m in msgs} == {dbid}
    ins = [m for m in msgs if m["msgid"] == "INSERT"]
    assert len(ins) == 40 and all(m["pri"] == 13 * 8 + 6 for m in ins)
    body = ins[0]["body"]
    assert body["class_uid"] == 6005 and body["activity_name"] == "Create"
    assert body["unmapped"]["heliosdb_database_id"] == dbid
    assert body["unmapped"]["heliosdb"]["id"] == ins[0]["id"]
    assert body["actor"]["user"]["name"] == "device"


def test_tls_refuses_a_collector_the_ca_did_not_sign(tmp_path):
    make_db(tmp_path / "a.db", 2)
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    col = FrameCollector(pki)
    try:
        conn = heliosdb.connect(str(tmp_path / "a.db"), config="default",
                                isolation_level=None)
        try:
            with pytest.raises(OperationalError, match="does not verify against"):
                conn.audit.ship(f"syslog+tls://127.0.0.1:{col.port}", state=tmp_path / "s",
                                ca_file=str(other["ca"]))
            with pytest.raises(ProgrammingError, match="plain TCP"):
                conn.audit.ship(f"syslog+tcp://127.0.0.1:{col.port}", state=tmp_path / "t",
                                ca_file=str(pki["ca"]))
        finally:
            conn.close()
    finally:
        col.close()
    assert col.messages == []
    assert ShipState.load(str(tmp_path / "s")).last_id == 0  # nothing acknowledged


# --------------------------------------------------------------------------------------------
# kill -9 while shipping, then restart
# --------------------------------------------------------------------------------------------

# The shipper, run as a process. With kill_after=k it SIGKILLs itself right after the
# destination took batch k and before the state file records it: the worst moment; with -1,
# after the last batch (up to the head at its start).
_SHIPPER = textwrap.dedent("""
    import os, signal, sys
    import heliosdb
    import heliosdb.audit.ship as ship

    db, to, state, batch, kill_after = sys.argv[1:6]
    kill_after = int(kill_after)
    real, calls = ship._ship_batch, [0]
    conn = heliosdb.connect(db, config="default", isolation_level=None)
    with conn.audit._internal():
        head = conn.audit._db.execute("SELECT max(id) FROM __audit_log").fetchone()[0]

    def ship_batch(session, t, table, dest, verifier, start, end, *a):
        out = real(session, t, table, dest, verifier, start, end, *a)
        calls[0] += 1
        if calls[0] == kill_after or (kill_after == -1 and end == head):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    ship._ship_batch = ship_batch
    r = conn.audit.ship(to, state=state, batch_size=int(batch),
                        ca_file=os.environ.get("SHIP_CA"))
    conn.close()
    print(r.last_id)
""")


def run_shipper(tmp_path: Path, db: Path, to: str, state: Path, batch: int,
                kill_after: int = 0, wait: bool = True, env: dict = None):
    script = tmp_path / "shipper.py"
    script.write_text(_SHIPPER)
    args = [sys.executable, str(script), str(db), to, str(state), str(batch), str(kill_after)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    if not wait:
        return proc
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def _acked(state: Path) -> int:
    try:
        return ShipState.load(str(state)).last_id
    except (ProgrammingError, AttributeError):
        return -1


def test_kill_9_while_shipping_parquet_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 3000)
    lake, state = tmp_path / "lake", tmp_path / "a.state"
    to = f"parquet:{lake}"
    # 1. killed after the 3rd part was renamed into place, before the state recorded it
    rc, _, err = run_shipper(tmp_path, db, to, state, 40, kill_after=3)
    assert rc == -signal.SIGKILL, err
    assert _acked(state) == 80 and max(dataset_ids(lake, dbid)) == 120
    # 2. killed from outside, wherever it is
    proc = run_shipper(tmp_path, db, to, state, 40, wait=False)
    while proc.poll() is None and _acked(state) < 1000:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL  # it was stopped mid-way
    assert 1000 <= _acked(state) < 3000
    # 3. killed at the worst moment: in the middle, then after the last (short) part,
    # which the next run, its head one LOGIN further, cuts differently
    rc, _, err = run_shipper(tmp_path, db, to, state, 40, kill_after=5)
    assert rc == -signal.SIGKILL, err
    rc, _, err = run_shipper(tmp_path, db, to, state, 40, kill_after=-1)
    assert rc == -signal.SIGKILL, err
    rc, out, err = run_shipper(tmp_path, db, to, state, 40)
    assert rc == 0, err
    last = int(out)  # each run adds its own LOGIN: the head is where the last run began
    assert last == _acked(state) > 3000
    assert dataset_ids(lake, dbid) == list(range(1, last + 1))  # each once, in order
    assert verify_fleet(str(lake)).ok
    assert not list(lake.rglob("*.tmp*"))


def test_kill_9_while_shipping_syslog_loses_nothing(tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 1500)
    col = FrameCollector()
    state = tmp_path / "a.state"
    to = f"syslog+tcp://127.0.0.1:{col.port}"
    try:
        rc, _, err = run_shipper(tmp_path, db, to, state, 50, kill_after=4)
        assert rc == -signal.SIGKILL, err
        assert _acked(state) == 150
        rc, out, err = run_shipper(tmp_path, db, to, state, 50, kill_after=11)
        assert rc == -signal.SIGKILL, err
        rc, out, err = run_shipper(tmp_path, db, to, state, 50)
        assert rc == 0, err
        last = int(out)
        col.wait_idle()
    finally:
        col.close()
    assert not col.errors
    msgs = [parse_message(m) for m in col.messages]
    assert {m["db"] for m in msgs} == {dbid}
    ids = [m["id"] for m in msgs]
    assert set(ids) == set(range(1, last + 1))  # every event at least once
    # the duplicates are the batches sent but not acknowledged: 151..200 and 651..700
    dupes = sorted(i for i in set(ids) if ids.count(i) > 1)
    assert dupes == list(range(151, 201)) + list(range(651, 701))
    assert all(ids.count(i) == 2 for i in dupes)
    firsts = list(dict.fromkeys(ids))  # a receiver dropping duplicates sees id order
    assert firsts == list(range(1, last + 1))
    assert all(m["body"]["database_id"] == dbid and m["body"]["id"] == m["id"] for m in msgs)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------

def test_cli_ship_resumes_is_quiet_when_piped_and_exits_1_on_tampering(tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 25)
    args = ["ship", str(db), "--to", "parquet:lake", "--state", "a.state", "--batch", "10"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar when standard error is not a terminal
    assert proc.stdout.startswith("shipped ") and f"of database {dbid} to parquet:lake" \
        in proc.stdout
    proc = run_cli([*args, "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["count"] >= 1 and r["first_id"] == r["resumed_after"] + 1
    assert dataset_ids(tmp_path / "lake", dbid) == list(range(1, r["last_id"] + 1))
    import sqlite3
    with sqlite3.connect(db) as c:  # tamper behind HeliosDB's back
        c.execute("UPDATE __audit_log SET target = 'forged' WHERE id = ?", (r["last_id"] + 1,))
    c.close()
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1
    assert f"event {r['last_id'] + 1}'s fields do not match its checksum" in proc.stderr
    make_db(tmp_path / "b.db", 1)
    proc = run_cli(["ship", "b.db", "--to", "syslog+tcp://127.0.0.1:1", "--state", "b.state"],
                   cwd=tmp_path)
    assert proc.returncode == 2 and "cannot connect to the syslog collector" in proc.stderr


# --------------------------------------------------------------------------------------------
# README's "Shipping audit to a fleet store" is what the commands print
# --------------------------------------------------------------------------------------------

def test_readme_shipping_transcript(tmp_path):
    """Each ``$`` line of the README block is run with bash in a fresh directory (a TLS
    collector on loopback stands for localhost:6514, with the README's ca.pem); database
    ids, dates and times are normalised."""
    import re
    import shutil

    from test_cli_docs import _transcript
    from helpers.cli import cli_env

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Shipping audit to a fleet store\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```\n(.*?)```", section, re.S) if b.startswith("$ ")]
    pki = make_pki(tmp_path / "pki")
    cwd = tmp_path / "run"
    cwd.mkdir()
    shutil.copy(pki["ca"], cwd / "ca.pem")
    env = cli_env(cwd)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")

    def norm(text: str) -> str:
        text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", "TIME", text)
        text = re.sub(r"\b[0-9a-f]{32}\b", "DATABASE_ID", text)
        return re.sub(r"date=\d{4}-\d\d-\d\d", "date=DAY", text)

    col = FrameCollector(pki)
    try:
        for cmd, expected in _transcript(block):
            run = cmd.replace("localhost:6514", f"localhost:{col.port}")
            proc = subprocess.run(["bash", "-c", run + " 2>&1"], cwd=str(cwd), env=env,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=120, start_new_session=True)
            got = proc.stdout.rstrip("\n").replace(f"localhost:{col.port}", "localhost:6514")
            assert norm(got) == norm(expected), (cmd, proc.stdout)
        col.wait_idle()
    finally:
        col.close()
    ids = [parse_message(m)["id"] for m in col.messages]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) == 12


def test_cli_ship_draws_progress_on_a_terminal(tmp_path):
    from helpers.cli import HELIOSDB, Pty, cli_env

    make_db(tmp_path / "a.db", 30)
    env = cli_env(tmp_path, TERM="xterm")
    env.pop("NO_COLOR", None)
    term = Pty([*HELIOSDB, "ship", "a.db", "--to", "parquet:lake", "--state", "s",
                "--batch", "10"], cwd=tmp_path, env=env)
    term.expect("shipped ")
    assert term.wait() == 0
    assert "Shipping audit events" in term.text


def test_fleet_scale_bench_runs(tmp_path):
    """bench/fleet_scale.py at a tiny size: every step runs and the report is written (its
    timings are never asserted)."""
    out = tmp_path / "fleet_scale.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet_scale.py"),
                           "--databases", "2", "--events", "300", "--batch", "100",
                           "--jobs", "2", "--out", str(out), "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["events"] >= 600 and res["databases"] == 2
    for step in ("export_parquet", "ship_parquet", "ship_syslog_tcp", "fleet_verify"):
        assert res[step]["events_per_s"] > 0
    text = out.read_text()
    assert "| fleet-verify the shipped dataset (2 processes) |" in text
    assert "| JSONL.gz export |" in text
