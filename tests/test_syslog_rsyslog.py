"""Issue 21, item 2: shipping to a real collector, Debian's rsyslog, on loopback.

Each test starts its own ``rsyslogd -n`` with a config written into tmp_path (imtcp, a
plain TCP input and a TLS input with the gtls driver and a self-made CA that also checks
the client's certificate, ``%rawmsg%`` written to a file per input), on free ports, with
its own pid file and work directory: never the system's config or daemon. rsyslog is
installed (apt-get, as root) when missing; where it cannot be installed or started the
tests are skipped, saying why.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import heliosdb
from heliosdb.audit.ship import ShipState
from helpers.syslog import free_port, make_pki, parse_message
from test_audit_ship import make_db, run_shipper

_GTLS = "/usr/lib/*/rsyslog/lmnsd_gtls.so"
#: Upper bounds for a daemon to start and to write what it received: a limit against a
#: hang, never a measurement.
_START_LIMIT_S = 30
_WRITE_LIMIT_S = 120


@pytest.fixture(scope="session")
def rsyslogd() -> str:
    """The rsyslogd binary with its gtls driver, installed by apt-get when missing."""
    if shutil.which("rsyslogd") is None or not glob.glob(_GTLS):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("rsyslog (with rsyslog-gnutls) is not installed, and installing it "
                        "needs root and apt-get")
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "rsyslog", "rsyslog-gnutls"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode != 0 or shutil.which("rsyslogd") is None or not glob.glob(_GTLS):
            pytest.skip("apt-get install rsyslog rsyslog-gnutls failed: "
                        + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    return shutil.which("rsyslogd")


class Rsyslog:
    """An rsyslogd of the test's own: ``tcp_port``, ``tls_port``, ``pki``, and
    ``lines(name)`` for what it wrote (``name`` = ``"tcp"`` or ``"tls"``)."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.folder = folder
        self.pki = make_pki(folder / "pki", client=True)
        self.tcp_port, self.tls_port = free_port(), free_port()
        work = folder / "work"
        work.mkdir()
        conf = folder / "rsyslog.conf"
        conf.write_text(f"""
global(workDirectory="{work}" maxMessageSize="256k"
       defaultNetstreamDriverCAFile="{self.pki['ca']}"
       defaultNetstreamDriverCertFile="{self.pki['server_cert']}"
       defaultNetstreamDriverKeyFile="{self.pki['server_key']}")
module(load="imtcp" maxSessions="16")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="tcp") {{ action(type="omfile" file="{folder}/tcp.log" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{folder}/tls.log" template="raw") }}
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
""")
        self.proc = subprocess.Popen([binary, "-n", "-f", str(conf), "-i",
                                      str(folder / "rsyslogd.pid")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + _START_LIMIT_S
        while not (self._listening(self.tcp_port) and self._listening(self.tls_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.stop()
                pytest.skip(f"rsyslogd did not start: {out.strip()[-500:]}")
            time.sleep(0.05)

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def lines(self, name: str, expect: int) -> list[bytes]:
        """Once ``expect`` lines are in the file (or rsyslogd ended): stop the daemon, so
        that everything it received is written, and return every line. ``expect=0``:
        stop now."""
        path = self.folder / f"{name}.log"
        deadline = time.monotonic() + _WRITE_LIMIT_S
        while expect and self.proc.poll() is None and time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= expect:
                break
            time.sleep(0.05)
        self.stop()
        return path.read_bytes().splitlines() if path.exists() else []

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


@pytest.fixture
def rsyslog(rsyslogd, tmp_path):
    r = Rsyslog(rsyslogd, tmp_path / "rsyslog")
    yield r
    r.stop()


def test_rsyslog_receives_ocsf_over_tls_with_a_client_certificate(rsyslog, tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 200)
    pki = rsyslog.pki
    conn = heliosdb.connect(str(db), config="default", isolation_level=None)
    try:
        r = conn.audit.ship(f"syslog+tls://localhost:{rsyslog.tls_port}", state=tmp_path / "s",
                            ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]),
                            key_file=str(pki["client_key"]), body="ocsf", batch_size=64)
    finally:
        conn.close()
    msgs = [parse_message(line) for line in rsyslog.lines("tls", r.count)]
    assert [m["id"] for m in msgs] == list(range(1, r.last_id + 1))
    assert {m["db"] for m in msgs} == {dbid} and {m["app"] for m in msgs} == {"heliosdb"}
    inserts = [m for m in msgs if m["msgid"] == "INSERT"]
    assert len(inserts) == 200
    for m in inserts:
        body = m["body"]
        assert body["class_uid"] == 6005 and body["activity_name"] == "Create"
        assert body["unmapped"]["heliosdb_database_id"] == dbid
        assert body["unmapped"]["heliosdb"]["id"] == m["id"]
        assert body["table"] == {"name": "readings"}


def test_rsyslog_refuses_a_client_without_a_certificate(rsyslog, tmp_path):
    """rsyslog checks the client certificate after the TLS 1.3 handshake has ended on the
    client's side: the batch was written, but the reset instead of a clean close says it
    was not read, so nothing is acknowledged."""
    make_db(tmp_path / "a.db", 3)
    conn = heliosdb.connect(str(tmp_path / "a.db"), config="default", isolation_level=None)
    try:
        with pytest.raises(heliosdb.OperationalError, match="syslog collector"):
            conn.audit.ship(f"syslog+tls://127.0.0.1:{rsyslog.tls_port}",
                            state=tmp_path / "s", ca_file=str(rsyslog.pki["ca"]))
    finally:
        conn.close()
    assert ShipState.load(str(tmp_path / "s")).last_id == 0
    assert rsyslog.lines("tls", 0) == []


def test_rsyslog_over_tcp_after_kill_9_has_every_event_in_id_order(rsyslog, tmp_path):
    db = tmp_path / "a.db"
    dbid = make_db(db, 1000)
    to = f"syslog+tcp://127.0.0.1:{rsyslog.tcp_port}"
    state = tmp_path / "a.state"
    rc, _, err = run_shipper(tmp_path, db, to, state, 50, kill_after=7)
    assert rc == -signal.SIGKILL, err
    rc, out, err = run_shipper(tmp_path, db, to, state, 50)
    assert rc == 0, err
    last = int(out)
    msgs = [parse_message(line) for line in rsyslog.lines("tcp", last + 50)]
    ids = [m["id"] for m in msgs]
    assert {m["db"] for m in msgs} == {dbid}
    assert sorted(set(ids)) == list(range(1, last + 1))  # every event at least once
    assert len(ids) == last + 50  # batch 7 (301..350) was sent twice, nothing else
    assert list(dict.fromkeys(ids)) == list(range(1, last + 1))  # in id order
    assert all(m["body"]["database_id"] == dbid for m in msgs)
