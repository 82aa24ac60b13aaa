"""Nothing on disk is a function of the plaintext without the key: WAL frame checksums and
rollback-journal record checksums are sealed (header version 2, csrc/vfs.c "Checksum
sealing", heliosdb/crypto/seal.py).

* The PIN experiment of issue 23: with only the ``-wal`` file, brute-force a 4-digit PIN
  against the frame checksum. It recovers the PIN from a version-1 file (the saved
  fixture tests/vectors/v1/pins.db-wal, made by the code before the change: the attack
  is real) and must fail on a version-2 file.
* A scan: SQLite's checksum recomputed over every decrypted page of a WAL and of a hot
  rollback journal matches no stored checksum; unsealed with the key, every one matches
  (SQLite still sees and checks its own checksums).
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from typing import Optional, Tuple

import apsw
import pytest

import heliosdb
from heliosdb import crypto
from heliosdb.crypto import pages, seal

pytestmark = pytest.mark.skipif(not heliosdb.native_available(), reason="needs the C extension")

KEY = bytes(range(32))
PIN = 7351
VECTORS = os.path.join(os.path.dirname(__file__), "vectors", "v1")
sys.path.insert(0, VECTORS)
from make_pins import make_pins, open_pins  # noqa: E402  (the victim, shared with the v1 fixture)


from heliosdb.crypto.seal import journal_checksum as journal_cksum  # noqa: E402
from heliosdb.crypto.seal import wal_checksum as wal_cksum  # noqa: E402


@pytest.fixture(scope="module")
def candidate_pages(tmp_path_factory):
    """Page 2 of pins(id, pin) holding (1, c) for c in 0..9999, built with plain SQLite
    the way an attacker would (same schema, page size and reserve; no key)."""
    d = tmp_path_factory.mktemp("attacker")

    def sqlite_page(cand: int) -> bytes:
        """Page 2 of a fresh plain database after the victim's statements."""
        p = str(d / f"guess{cand}.db")
        c = apsw.Connection(p)
        crypto.set_reserve(c, "main")
        c.execute("pragma page_size=4096; pragma journal_mode=off")
        c.execute("create table pins(id integer primary key, pin integer)")
        c.execute("insert into pins values (1, ?)", (cand,))
        c.close()
        with open(p, "rb") as f:
            f.seek(4096)
            page = f.read(4096)
        os.remove(p)
        # The shim hands SQLite its pages with the 28 cipher bytes zeroed.
        return page[:4096 - 28] + bytes(28)

    # One page per record serial type made by SQLite, then the integer patched in (it is
    # the cell's last bytes, at the end of the usable area); checked against SQLite for
    # a sample below, so the shortcut cannot drift.
    templates = {0: sqlite_page(0), 1: sqlite_page(1), 2: sqlite_page(2),
                 128: sqlite_page(128)}
    end = 4096 - 32
    out = {0: templates[0], 1: templates[1]}
    for cand in range(2, 10000):
        page = bytearray(templates[2] if cand < 128 else templates[128])
        if cand < 128:
            page[end - 1] = cand
        else:
            page[end - 2:end] = struct.pack(">H", cand)
        out[cand] = bytes(page)
    for cand in list(range(0, 300, 7)) + [PIN - 1, PIN, PIN + 1, 9999]:
        assert out[cand] == sqlite_page(cand), cand
    return out


def attack(wal: bytes, candidates) -> Optional[int]:
    """The PIN from the WAL file alone, or None."""
    magic, _v, ps, _ck, _s1, _s2, c1, c2 = struct.unpack(">8I", wal[:32])
    big = bool(magic & 1)
    prev = (c1, c2)
    off = 32
    while off + 24 + ps <= len(wal):
        fh = wal[off:off + 24]
        pgno, _commit, _a, _b, f1, f2 = struct.unpack(">6I", fh)
        if pgno == 2:
            seed = wal_cksum(fh[:8], big, *prev)
            for cand, page in candidates.items():
                if wal_cksum(page, big, *seed) == (f1, f2):
                    return cand
        prev = (f1, f2)
        off += 24 + ps
    return None


def test_pin_experiment_recovers_nothing_from_a_sealed_wal(tmp_path, candidate_pages):
    # The attack works against the format before the change (the test can fail)...
    with open(os.path.join(VECTORS, "pins.db-wal"), "rb") as f:
        assert attack(f.read(), candidate_pages) == PIN
    # ...and recovers nothing from a version-2 WAL made the same way.
    p = str(tmp_path / "pins.db")
    make_pins(p, KEY, PIN)
    with open(p, "rb") as f:
        assert struct.unpack(">I", f.read(20)[16:20])[0] == 2
    with open(p + "-wal", "rb") as f:
        wal = f.read()
    assert attack(wal, candidate_pages) is None
    # With the key, the sealed checksum opens to SQLite's, which matches the true page.
    header, dek = crypto.unlock_file(p, KEY, "test")
    fh = wal[32:56]
    ks = seal.wal_keystream(dek, header.file_id, 32, fh[8:16])
    opened = fh[:16] + bytes(a ^ b for a, b in zip(fh[16:24], ks))
    assert attack(wal[:32] + opened + wal[56:], candidate_pages) == PIN
    # And the database still reads its WAL (SQLite verified the opened checksums).
    c = heliosdb.connect(p, key=KEY)
    assert c.execute("select pin from pins").fetchall() == [(PIN,)]
    c.close()


def _wal_scan(path: str, dek: bytes, fid: bytes, sealed: bool) -> Tuple[int, int, int]:
    """(frames, stored == SQLite's checksum over the plaintext, opened == it)."""
    with open(path + "-wal", "rb") as f:
        wal = f.read()
    magic, _v, ps, _ck, s1, s2, c1, c2 = struct.unpack(">8I", wal[:32])
    big = bool(magic & 1)
    true_prev = (c1, c2)
    n = clear = opened_ok = 0
    off = 32
    while off + 24 + ps <= len(wal):
        fh = wal[off:off + 24]
        pgno, _commit, fs1, fs2, f1, f2 = struct.unpack(">6I", fh)
        if (fs1, fs2) != (s1, s2):
            break
        plain = pages.decrypt_page(dek, fid, pgno, wal[off + 24:off + 24 + ps], pages.DOMAIN_WAL)
        want = wal_cksum(plain, big, *wal_cksum(fh[:8], big, *true_prev))
        n += 1
        clear += (f1, f2) == want
        ks = seal.wal_keystream(dek, fid, off, fh[8:16]) if sealed else bytes(8)
        o1, o2 = struct.unpack(">2I", bytes(a ^ b for a, b in zip(fh[16:24], ks)))
        opened_ok += (o1, o2) == want
        true_prev = want
        off += 24 + ps
    return n, clear, opened_ok


def _open_wal(path: str, create: str):
    """A new database encrypted under KEY, in WAL mode with no automatic checkpoint (every
    frame stays in the -wal to be scanned), holding the table ``create`` makes."""
    c = heliosdb.connect(path, key=KEY, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("pragma wal_autocheckpoint=0")
    c.execute(create)
    return c


def test_scan_no_wal_frame_checksum_matches_the_plaintext(tmp_path):
    p = str(tmp_path / "w.db")
    c = _open_wal(p, "create table t(a, b)")
    for i in range(40):
        c.execute("insert into t values (?, ?)", (i, os.urandom(300).hex()))
    c.execute("update t set a = a + 1 where a % 3 = 0")
    shutil.copy(p + "-wal", p + "-wal.copy")
    header, dek = crypto.unlock_file(p, KEY, "test")
    c.close()
    os.replace(p + "-wal.copy", p + "-wal")
    n, clear, opened = _wal_scan(p, bytes(dek), header.file_id, sealed=True)
    assert n >= 40 and clear == 0 and opened == n
    # The same scan finds every checksum in clear in a version-1 WAL (the saved fixture).
    v1 = str(tmp_path / "v1.db")
    shutil.copy(os.path.join(VECTORS, "raw.db"), v1)
    shutil.copy(os.path.join(VECTORS, "raw.db-wal"), v1 + "-wal")
    h1, dek1 = crypto.unlock_file(v1, KEY, "test")
    n1, clear1, opened1 = _wal_scan(v1, bytes(dek1), h1.file_id, sealed=False)
    assert n1 >= 2 and clear1 == n1 == opened1
    # verify_encryption (pure Python) opens the sealed checksums and finds the chain whole.
    from heliosdb.crypto.verify import verify_encryption

    rep = verify_encryption(p, KEY)
    assert rep.ok and rep.wal_frames_checked == n and rep.wal_tail_ignored == 0


HOT_JOURNAL_CHILD = r"""
import os, sys
import heliosdb
c = heliosdb.connect(sys.argv[1], key=bytes(range(32)), isolation_level=None)
c.execute("pragma cache_size=2")
c.execute("begin")
c.execute("update j set a = 'changed ' || a")
os._exit(0)
"""


@pytest.mark.parametrize("version", [2, 1])
def test_scan_no_journal_checksum_matches_the_plaintext(tmp_path, version):
    """Version 2: no stored record checksum is SQLite's. Version 1 (a saved file, still
    written with clear checksums): every one is, so the scan can see a leak."""
    p = str(tmp_path / "j.db")
    if version == 1:
        shutil.copy(os.path.join(VECTORS, "raw.db"), p)
        shutil.copy(os.path.join(VECTORS, "raw.db-wal"), p + "-wal")
    c = heliosdb.connect(p, key=KEY, isolation_level=None)
    c.execute("pragma journal_mode=delete")
    c.execute("create table j(a)")
    for i in range(60):
        c.execute("insert into j values (?)", (f"row {i} " + "x" * 400,))
    c.close()
    root = os.path.dirname(os.path.dirname(os.path.abspath(heliosdb.__file__)))
    subprocess.run([sys.executable, "-c", HOT_JOURNAL_CHILD, p], check=True, cwd=root)
    with open(p + "-journal", "rb") as f:
        j = f.read()
    header, dek = crypto.unlock_file(p, KEY, "test")
    magic = j[:8]
    n = clear = opened = 0
    hdr = 0
    while hdr + 28 <= len(j) and j[hdr:hdr + 8] == magic:  # one segment per journal header
        n_rec, init, _dbsize, sector, ps = struct.unpack(">IIIII", j[hdr + 8:hdr + 28])
        assert ps == 4096
        off, k = hdr + sector, 0
        while off + 8 + ps <= len(j) and (n_rec in (0, 0xFFFFFFFF) or k < n_rec):
            (pgno,) = struct.unpack(">I", j[off:off + 4])
            stored_page = j[off + 4:off + 4 + ps]
            plain = pages.decrypt_page(bytes(dek), header.file_id, pgno, stored_page,
                                       pages.DOMAIN_JOURNAL)
            (stored,) = struct.unpack(">I", j[off + 4 + ps:off + 8 + ps])
            want = journal_cksum(init, plain)
            nonce = stored_page[ps - 28:ps - 16]
            ks = seal.journal_keystream(bytes(dek), header.file_id, off + 4 + ps, nonce)
            n += 1
            k += 1
            clear += stored == want
            opened += (stored ^ struct.unpack(">I", ks)[0]) == want
            off += 8 + ps
        hdr = -(-off // sector) * sector
    if version == 2:
        assert n >= 5 and clear == 0 and opened == n
    else:
        assert n >= 5 and clear == n
    # The hot journal still rolls the interrupted transaction back.
    c = heliosdb.connect(p, key=KEY)
    assert c.execute("select count(*) from j where a like 'changed%'").fetchone() == (0,)
    assert c.execute("pragma integrity_check").fetchone() == ("ok",)
    c.close()


def test_wal_shared_by_two_processes_with_sealed_checksums(tmp_path):
    """Frames written by one process are read (recovered, checkpointed) by another."""
    p = str(tmp_path / "s.db")
    c = _open_wal(p, "create table t(a)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(heliosdb.__file__)))
    child = (f"import heliosdb, os\nc = heliosdb.connect({p!r}, key={KEY!r}, isolation_level=None)\n"
             "c.execute('pragma wal_autocheckpoint=0')\n"
             "[c.execute('insert into t values (?)', ('z' * 900,)) for _ in range(30)]\n"
             "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", child], check=True, cwd=root)
    assert c.execute("select count(*) from t").fetchone() == (30,)
    c.execute("insert into t values ('parent')")
    c.close()
    # A fresh process recovers the WAL (re-reading every sealed frame checksum).
    for suf in ("-shm",):
        if os.path.exists(p + suf):
            os.remove(p + suf)
    c = heliosdb.connect(p, key=KEY)
    assert c.execute("select count(*) from t").fetchone() == (31,)
    assert c.execute("pragma integrity_check").fetchone() == ("ok",)
    c.close()


def test_shm_keeps_the_wal_index_off_the_disk(tmp_path, candidate_pages):
    """-shm is shared memory SQLite writes directly (the shim cannot seal it), and its
    WAL-index header holds the cumulative checksum of the last committed frame: with the
    WAL's clear header, -wal + -shm of a one-frame WAL gave the PIN away (measured on
    version 1 below). Version 2 keeps the WAL index in a POSIX shared-memory object
    named from the key and file id; SQLite's -shm file holds only lock bytes (zeros)."""
    p = str(tmp_path / "pins.db")
    c = open_pins(p, KEY, PIN)
    with open(p + "-wal", "rb") as f:
        wal = f.read()
    with open(p + "-shm", "rb") as f:
        disk_shm = f.read()
    header, dek = crypto.unlock_file(p, KEY, "test")
    import hashlib
    import hmac

    st = os.stat(p)
    name = "heliosdb-" + hmac.new(bytes(dek), b"HeliosDB shm name v2" + header.file_id
                                  + struct.pack(">QQ", st.st_dev, st.st_ino),
                                  hashlib.sha256).hexdigest()[:32]
    with open("/dev/shm/" + name, "rb") as f:
        mem_shm = f.read(136)
    c.close()
    assert not any(disk_shm), "the -shm file on disk holds WAL-index data"
    assert not os.path.exists("/dev/shm/" + name), "the last close did not unlink it"
    assert attack(wal, candidate_pages) is None  # the -wal alone: nothing
    # The exposure that the object keeps off the disk (WalIndexHdr, native byte order:
    # mxFrame at 16, aFrameCksum at 24): the last frame's checksum in clear, chained
    # from the WAL header's, recovers the PIN. Here it is in RAM only, under a name only
    # a key holder can derive.
    mx_frame, = struct.unpack("=I", mem_shm[16:20])
    last = struct.unpack("=2I", mem_shm[24:32])
    assert mx_frame == 1
    forged = wal[:32 + 16] + struct.pack(">2I", *last) + wal[32 + 24:]
    assert attack(forged, candidate_pages) == PIN


def test_a_file_level_copy_never_shares_the_wal_index(tmp_path):
    """A cp of an encrypted database shares its key and file id; opened at the same time
    as the original, each must keep its own WAL index (it is named by inode too)."""
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    c = heliosdb.connect(a, key=KEY, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("create table t(x)")
    c.close()
    shutil.copy(a, b)
    ca = heliosdb.connect(a, key=KEY, isolation_level=None)
    cb = heliosdb.connect(b, key=KEY, isolation_level=None)
    for i in range(20):
        ca.execute("insert into t values (?)", (f"a{i}",))
    cb.execute("insert into t values ('b')")
    assert ca.execute("select count(*) from t").fetchone() == (20,)
    assert cb.execute("select x from t").fetchall() == [("b",)]
    ca.close()
    cb.close()
    for path, n in ((a, 20), (b, 1)):
        c = heliosdb.connect(path, key=KEY)
        assert c.execute("select count(*) from t").fetchone() == (n,)
        assert c.execute("pragma integrity_check").fetchone() == ("ok",)
        c.close()
