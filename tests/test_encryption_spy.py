"""A spy VFS *under* the encrypting shim sees every byte that reaches the disk.

In a fresh interpreter, an APSW Python VFS that records every write becomes the default
VFS before the heliosdb extension loads, so the shim stacks on top of it. The workload
writes marker strings through rollback journals, the WAL and temp files; the spy then
proves that no write carried a marker, that every page-sized write looks like ciphertext
(few zero bytes), and that no GCM nonce was ever used twice.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from heliosdb import native

from helpers.processes import run_python

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

SPY = textwrap.dedent("""
    import json, sys
    import apsw
    writes = []

    class SpyFile(apsw.VFSFile):
        def __init__(self, name, flags):
            self.spy_name = name.filename() if hasattr(name, "filename") else (name or "")
            super().__init__("unix", name, flags)

        def xWrite(self, data, offset):
            writes.append((self.spy_name, offset, bytes(data)))
            return super().xWrite(data, offset)

    from helpers.shim_vfs import install_default_vfs
    spy = install_default_vfs("spy", SpyFile)
    from helpers.enc import KEY, open_enc, q
    db = sys.argv[1]
    for mode in ("delete", "wal"):
        path = db + "." + mode
        c = open_enc(path, None if sys.argv[2] == "control" else KEY)
        q(c, "pragma journal_mode=" + mode)
        q(c, "pragma cache_size=5")
        q(c, "pragma temp_store=FILE")
        q(c, "create table t(id integer primary key, a text, b blob)")
        q(c, "create index ia on t(a)")
        for i in range(3):
            q(c, "insert into t(a, b) select 'HXM-spy-' || value, 'HXM-ovf' || randomblob(5000) "
                 "from (with recursive g(value) as (select 1 union all select value + 1 from g "
                 "limit 60) select value from g)")
            q(c, "update t set a = a || 'HXM-upd' where id % 3 = 0")
        cur = c.execute("select a from t order by b")
        next(cur)
        cur.close()
        q(c, "pragma wal_checkpoint(truncate)") if mode == "wal" else None
        c.close()

    page_sizes = {512 * 2 ** i for i in range(8)}
    nonces, plainish, marked, pages = [], 0, 0, 0
    for name, off, data in writes:
        if b"HXM-" in data:
            marked += 1
        is_page = False
        if len(data) in page_sizes:
            if name.endswith(("delete", "wal")) and off >= 4096:
                is_page = True                       # a main-file page
            elif name.endswith("-journal") and off % 8 == 4:
                is_page = True                       # a journal record's page image
            elif name.endswith("-wal") and off >= 32 + 24:
                is_page = True                       # a WAL frame's page
        if is_page:
            pages += 1
            nonces.append(data[-28:-16])
            if data[:-28].count(0) > len(data) // 32:
                plainish += 1
    print(json.dumps({"writes": len(writes), "pages": pages, "marked": marked,
                      "plainish": plainish, "dup_nonces": len(nonces) - len(set(nonces)),
                      "files": sorted({w[0].rsplit("/", 1)[-1] for w in writes})}))
""")


def _spy(tmp_path, mode):
    r = run_python(SPY, str(tmp_path / "spy.db"), mode)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_spy_sees_plaintext_without_a_key(tmp_path):
    """The control: the same workload without a key is caught by every check."""
    out = _spy(tmp_path, "control")
    assert out["marked"] > 0 and out["plainish"] > 0, out


def test_every_write_reaching_disk_is_ciphertext(tmp_path):
    out = _spy(tmp_path, "encrypted")
    assert out["pages"] > 200, out          # the spy really saw the page traffic
    assert {"spy.db.delete-journal", "spy.db.wal-wal"} <= set(out["files"]), out
    assert out["marked"] == 0, out
    assert out["plainish"] == 0, out
    assert out["dup_nonces"] == 0, out


TORN = textwrap.dedent("""
    import json, sys
    import apsw
    torn = {"left": int(sys.argv[2]), "served": 0}

    class TearingFile(apsw.VFSFile):
        # Serves a torn page 1 (as if another process were writing it) a set number of
        # times, then the real bytes.
        def __init__(self, name, flags):
            self.main = bool(flags[0] & apsw.SQLITE_OPEN_MAIN_DB)
            super().__init__("unix", name, flags)

        def xRead(self, amount, offset):
            data = super().xRead(amount, offset)
            if self.main and offset == 4096 and amount >= 512 and torn["left"] > 0:
                torn["left"] -= 1
                torn["served"] += 1
                half = len(data) // 2
                return data[:half] + bytes(b ^ 0x5A for b in data[half:])
            return data

    from helpers.shim_vfs import install_default_vfs
    vfs = install_default_vfs("tearing", TearingFile)
    from helpers.enc import KEY, open_enc, q
    from heliosdb.crypto import vfs as hvfs
    path = sys.argv[1]
    saved = torn["left"]
    torn["left"] = 0
    c = open_enc(path)
    q(c, "create table t(a)")
    q(c, "insert into t values(1)")
    c.close()
    torn["left"] = saved
    result = {}
    try:
        c = open_enc(path)
        result["rows"] = q(c, "select a from t")
        c.close()
    except Exception as exc:
        result["error"] = type(exc).__name__
        result["page"] = getattr(exc, "page", None)
    result["served"] = torn["served"]
    result["retries"] = hvfs.stats()["page1_retries"]
    print(json.dumps(result))
""")


@pytest.mark.parametrize("tears", [2, 50])
def test_torn_page1_read_is_retried(tmp_path, tears):
    r = run_python(TORN, str(tmp_path / "torn.db"), str(tears))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if tears == 2:
        # A read torn twice, then whole: retried, never a wrong key or a corrupt page.
        assert out.get("rows") == [[1]] and out["served"] == 2 and out["retries"] >= 2, out
    else:
        # Torn for good: after the retries it is a corrupt page 1, never a wrong key.
        assert out.get("error") == "CorruptPageError" and out["page"] == 1, out
