"""Tampering, corruption and crashes: every damaged page is an error naming it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from heliosdb import crypto, native
from heliosdb.crypto import Key, format as fmt, pages
from heliosdb.errors import CorruptPageError

from helpers.enc import KEY, open_enc, q
from helpers.files import files_under, hits

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")
HERE = os.path.dirname(os.path.abspath(__file__))
H = fmt.HEADER_SIZE


def _make_db(path, rows=120):
    c = open_enc(path)
    q(c, "create table t(id integer primary key, a text, b blob)")
    q(c, "create index ia on t(a)")
    q(c, "insert into t(a, b) select 'row' || value || hex(randomblob(40)), randomblob(200) "
         "from (with recursive g(value) as (select 1 union all select value + 1 from g "
         "limit ?) select value from g)", (rows,))
    q(c, "insert into t(a, b) values('big', randomblob(20000))")  # overflow chain
    kinds = q(c, "select pageno, pagetype, name from dbstat order by pageno")
    c.close()
    return kinds


def _read_all(path):
    c = open_enc(path)
    try:
        q(c, "select count(*), sum(length(a)), sum(length(hex(b))) from t")
        q(c, "select count(*) from t indexed by ia where a > ''")
        return q(c, "pragma integrity_check")
    finally:
        c.close()


def _read_error(path, match=None) -> CorruptPageError:
    """The CorruptPageError that reading every page of ``path`` raises."""
    with pytest.raises(CorruptPageError, match=match) as ei:
        _read_all(path)
    return ei.value


def _span(pg):
    """Where page ``pg`` is stored in the file: after HeliosDB's header, 4096 bytes."""
    return slice(H + (pg - 1) * 4096, H + pg * 4096)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def _page_of(kinds, pagetype, name):
    return next(pg for pg, t, n in kinds if t == pagetype and n == name)


def test_clean_database_reads(tmp_path):
    p = tmp_path / "a.db"
    _make_db(p)
    assert _read_all(p) == [("ok",)]


@pytest.mark.parametrize("which", [("internal", "t"), ("leaf", "t"), ("leaf", "ia"),
                                   ("internal", "ia"), ("overflow", "t")])
def test_flipped_byte_names_the_page(tmp_path, which):
    p = tmp_path / "a.db"
    kinds = _make_db(p, rows=400)
    pg = _page_of(kinds, *which)
    _flip(p, _span(pg).start + 777)
    err = _read_error(p)
    assert err.page == pg and err.file == str(p)
    assert f"page {pg}" in str(err)


def test_flipped_byte_in_page_1_fails_at_open(tmp_path):
    p = tmp_path / "a.db"
    _make_db(p)
    _flip(p, H + 50)  # inside SQLite's own (encrypted) header
    with pytest.raises(CorruptPageError) as ei:
        open_enc(p)
    assert ei.value.page == 1


@pytest.mark.parametrize("where", ["nonce", "tag"])
def test_flipped_reserved_bytes(tmp_path, where):
    p = tmp_path / "a.db"
    kinds = _make_db(p)
    pg = _page_of(kinds, "leaf", "t")
    off = 4096 - 28 + (3 if where == "nonce" else 20)
    _flip(p, _span(pg).start + off)
    assert _read_error(p).page == pg


def test_swapped_pages(tmp_path):
    p = tmp_path / "a.db"
    kinds = _make_db(p)
    a, b = [pg for pg, t, n in kinds if t == "leaf" and n == "t"][:2]
    raw = bytearray(p.read_bytes())
    raw[_span(a)], raw[_span(b)] = raw[_span(b)], raw[_span(a)]
    p.write_bytes(bytes(raw))
    assert _read_error(p).page in (a, b)


def test_page_from_another_file_with_the_same_key(tmp_path):
    p, other = tmp_path / "a.db", tmp_path / "b.db"
    kinds = _make_db(p)
    _make_db(other)
    pg = _page_of(kinds, "leaf", "t")
    raw = bytearray(p.read_bytes())
    raw[_span(pg)] = other.read_bytes()[_span(pg)]
    p.write_bytes(bytes(raw))
    assert _read_error(p).page == pg


def test_zeroed_page(tmp_path):
    p = tmp_path / "a.db"
    kinds = _make_db(p)
    pg = _page_of(kinds, "leaf", "ia")
    raw = bytearray(p.read_bytes())
    raw[_span(pg)] = bytes(4096)
    p.write_bytes(bytes(raw))
    assert _read_error(p, match="all zeros").page == pg


@pytest.mark.parametrize("cut", ["page", "mid-page"])
def test_truncated_file(tmp_path, cut):
    p = tmp_path / "a.db"
    _make_db(p)
    size = p.stat().st_size
    npages = (size - H) // 4096
    new = size - 4096 * 3 if cut == "page" else size - 1000
    os.truncate(p, new)
    expected = npages - 2 if cut == "page" else npages
    assert _read_error(p).page == expected


def test_wal_frame_tampered(tmp_path):
    p = tmp_path / "a.db"
    _make_db(p, rows=10)
    w = open_enc(p)
    q(w, "pragma journal_mode=wal")
    q(w, "pragma wal_autocheckpoint=0")
    q(w, "update t set a = a || 'changed'")
    wal = str(p) + "-wal"
    assert os.path.getsize(wal) > 32
    _flip(wal, 32 + 24 + 500)  # the page of the first frame
    with pytest.raises(CorruptPageError) as ei:
        r = open_enc(p)  # the first frame is page 1, read at open
        q(r, "select count(*), sum(length(a)) from t indexed by ia where a > ''")
        q(r, "select count(*), sum(length(a)), sum(length(hex(b))) from t")
    assert ei.value.file == wal and ei.value.page >= 1
    w.close()


def test_python_pages_decrypt_the_file(tmp_path):
    """The pure-Python transform reads what the C shim wrote (the offline-tool path)."""
    p = tmp_path / "a.db"
    _make_db(p, rows=5)
    raw = p.read_bytes()
    header = fmt.read_header(raw[:H])
    dek, _ = crypto.unlock_slot(str(p), header, Key.from_bytes(KEY))
    page1 = pages.decrypt_page(dek, header.file_id, 1, raw[H:H + 4096])
    assert page1.startswith(b"SQLite format 3\x00") and page1[20] == 32
    for pg in range(1, (len(raw) - H) // 4096 + 1):
        pages.decrypt_page(dek, header.file_id, pg, raw[H + (pg - 1) * 4096:H + pg * 4096])
    with pytest.raises(pages.PageAuthError):
        pages.decrypt_page(dek, header.file_id, 2, raw[H:H + 4096])


CRASH_CHILD = textwrap.dedent("""
    import sys, time
    from helpers.enc import open_enc, q
    c = open_enc(sys.argv[1])
    q(c, "pragma journal_mode=" + sys.argv[2])
    q(c, "pragma cache_size=5")
    q(c, "create table t(id integer primary key, a text, b blob)")
    q(c, "insert into t(a, b) select 'committed', randomblob(300) from "
         "(with recursive g(v) as (select 1 union all select v + 1 from g limit 200) select v from g)")
    q(c, "begin")
    q(c, "update t set a = 'HXM-uncommitted-' || id")
    q(c, "insert into t(a, b) select 'HXM-uncommitted-new', randomblob(300) from "
         "(with recursive g(v) as (select 1 union all select v + 1 from g limit 300) select v from g)")
    print("ready", flush=True)
    time.sleep(120)
""")


def _crash(path, mode):
    proc = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(path), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_kill_9_mid_transaction_recovers(tmp_path, mode):
    p = tmp_path / "a.db"
    _crash(p, mode)
    side = str(p) + ("-wal" if mode == "wal" else "-journal")
    assert os.path.exists(side) and os.path.getsize(side) > 0  # a hot journal / live WAL
    assert hits(files_under(tmp_path), [b"HXM-", b"committed"]) == []
    c = open_enc(p)
    assert q(c, "select count(*), min(a), max(a) from t") == [(200, "committed", "committed")]
    assert q(c, "pragma integrity_check") == [("ok",)]
    c.close()


def test_tampered_hot_journal_record(tmp_path):
    p = tmp_path / "a.db"
    _crash(p, "delete")
    j = str(p) + "-journal"
    with open(j, "rb") as f:
        head = f.read(28)
    sector = int.from_bytes(head[20:24], "big")
    _flip(j, sector + 4 + 300)  # inside the first record's page image
    with pytest.raises(CorruptPageError) as ei:
        c = open_enc(p)
        q(c, "select count(*) from t")
    assert ei.value.file == j and ei.value.page >= 1


TORN_WRITER = textwrap.dedent("""
    import sys
    from helpers.enc import open_enc, q
    c = open_enc(sys.argv[1])
    c.setbusytimeout(20000)
    q(c, "pragma synchronous=off")  # fast commits; each still rewrites page 1
    print("go", flush=True)
    for i in range(400):
        q(c, "insert into t(a) values(?)", (i,))  # each commit rewrites page 1
""")


def test_readers_during_page1_writes_never_see_a_wrong_key(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a)")
    c.close()
    proc = subprocess.Popen([sys.executable, "-c", TORN_WRITER, str(p)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "go"
        opened = 0
        while proc.poll() is None and opened < 300:
            r = open_enc(p)
            r.setbusytimeout(20000)
            q(r, "select count(*) from t")
            r.close()
            opened += 1
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    c = open_enc(p)
    assert q(c, "select count(*) from t") == [(400,)]
    c.close()


def test_stale_page_size_field_is_probed_and_repaired(tmp_path):
    p = tmp_path / "a.db"
    _make_db(p, rows=10)
    raw = bytearray(p.read_bytes())
    raw[48:52] = (8192).to_bytes(4, "big")  # not authenticated: a wrong hint
    p.write_bytes(bytes(raw))
    assert _read_all(p) == [("ok",)]
    c = open_enc(p)
    q(c, "insert into t(a) values('x')")  # the next sync rewrites the field
    c.close()
    assert fmt.read_header(p.read_bytes()[:H]).page_size == 4096
