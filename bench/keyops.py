"""Key operations at size (issue 12): rotation, encrypt, decrypt, verify of a ~100 MB db.

    .venv/bin/python bench/keyops.py [--mb 100] [--runs 3]

Reports pages per second against the AES-256-GCM limit of this machine (``openssl
speed -evp aes-256-gcm -bytes 4096``: one direction; rotation decrypts and encrypts
every page, and checks the copy with quick_check, a third pass), and encrypt of a
plaintext file against SQLCipher's ``sqlcipher_export`` when the SQLCipher venv of the
harness (bench/.venvs/sqlcipher) exists. Medians of ``--runs``; every run starts from a
fresh copy of the same bytes.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import apsw  # noqa: E402

from heliosdb.crypto import open_connection, rekey, verify  # noqa: E402

KEY = bytes(range(32))
NEW = bytes(range(1, 33))
FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE


def gcm_limit() -> float:
    """Pages of 4096 bytes per second, one AES-256-GCM direction (openssl speed)."""
    try:
        out = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "4096",
                              "-seconds", "2"], capture_output=True, text=True,
                             timeout=60).stdout
        m = re.search(r"AES-256-GCM\s+([\d.]+)k", out, re.I)
        return float(m.group(1)) * 1000 / 4096 if m else float("nan")
    except (OSError, subprocess.SubprocessError):
        return float("nan")


def build_plain(path: str, mb: int) -> None:
    c = apsw.Connection(path)
    c.execute("create table t(id integer primary key, b blob, s text)")
    rows = mb * 1024 * 1024 // 1100
    c.execute("begin")
    c.execute(f"with recursive r(i) as (select 1 union all select i+1 from r where i<{rows}) "
              "insert into t(b, s) select randomblob(1000), 'row ' || i from r")
    c.execute("create index t_s on t(s)")
    c.execute("commit")
    c.close()


def sqlcipher_export(plain: str, out: str) -> float:
    py = os.path.join(HERE, ".venvs", "sqlcipher", "bin", "python")
    if not os.path.exists(py):
        return float("nan")
    code = f"""
import time, sqlcipher3 as s
c = s.connect({plain!r})
t = time.perf_counter()
c.execute("ATTACH DATABASE ? AS enc KEY \\"x'{KEY.hex()}'\\"", ({out!r},))
c.execute("SELECT sqlcipher_export('enc')")
c.execute("DETACH DATABASE enc")
print(time.perf_counter() - t)
"""
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=600)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print("sqlcipher run failed:", r.stderr[-500:], file=sys.stderr)
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="helios-keyops-")
    try:
        plain = os.path.join(d, "plain.db")
        build_plain(plain, a.mb)
        enc = os.path.join(d, "enc.db")
        rekey.encrypt(plain, enc, KEY)
        pages = (os.path.getsize(enc) - 4096) // 4096
        res: dict = {k: [] for k in ("rotate", "rotate_wal", "encrypt", "decrypt", "verify",
                                     "sqlcipher_export")}
        for run in range(a.runs):
            w = os.path.join(d, f"w{run}.db")
            shutil.copyfile(enc, w)
            t = time.perf_counter()
            rekey.rotate_key(w, KEY, NEW)
            res["rotate"].append(time.perf_counter() - t)
            c = open_connection(w, flags=FLAGS, uri=False, key=NEW, encryption=None)
            c.execute("pragma journal_mode=wal").fetchall()
            c.close()
            t = time.perf_counter()
            rekey.rotate_key(w, NEW, KEY)
            res["rotate_wal"].append(time.perf_counter() - t)
            t = time.perf_counter()
            rep = verify.verify_encryption(w, KEY)
            res["verify"].append(time.perf_counter() - t)
            assert rep.ok
            e2 = os.path.join(d, f"e{run}.db")
            t = time.perf_counter()
            rekey.encrypt(plain, e2, KEY)
            res["encrypt"].append(time.perf_counter() - t)
            p2 = os.path.join(d, f"p{run}.db")
            t = time.perf_counter()
            rekey.decrypt(e2, p2, KEY)
            res["decrypt"].append(time.perf_counter() - t)
            res["sqlcipher_export"].append(sqlcipher_export(plain, os.path.join(d, f"s{run}.db")))
            for f in (w, e2, p2, os.path.join(d, f"s{run}.db")):
                if os.path.exists(f):
                    os.remove(f)
        lim = gcm_limit()
        print(f"database: {os.path.getsize(enc) / 1e6:.1f} MB, {pages} pages of 4096; "
              f"AES-256-GCM limit (openssl, one direction): {lim:,.0f} pages/s")
        for k, v in res.items():
            if not v or any(x != x for x in v):
                print(f"{k:18s} n/a")
                continue
            m = statistics.median(v)
            print(f"{k:18s} {m:7.3f} s  {pages / m:10,.0f} pages/s  "
                  f"({pages / m / lim:.1%} of one-direction GCM)  runs {[round(x, 3) for x in v]}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
