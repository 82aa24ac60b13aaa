"""Encryption core: open/keys/errors, no plaintext on disk, multi-connection, ATTACH."""
from __future__ import annotations

import gc
import os
import textwrap

import apsw
import pytest

from heliosdb import crypto, native
from heliosdb.crypto import Key, format as fmt
from heliosdb.errors import (
    DatabaseError, EncryptionError, KeyRequiredError, NotEncryptedError, WrongKeyError,
)

from helpers.processes import run_python
from helpers.enc import FLAGS, KEY, OTHER_KEY, assert_reopens, open_enc, open_fd_files, q
from helpers.files import files_under, hits
from helpers.threads import run_threads

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")


def marker(tag: str) -> str:
    return f"HXM-{tag}-Zq7"


# ------------------------------------------------------------------ open and keys ---

def test_roundtrip_and_file_layout(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a, b)")
    q(c, "insert into t values(?, ?)", (marker("row"), 42))
    c.close()
    raw = p.read_bytes()
    assert raw.startswith(fmt.MAGIC)
    assert b"SQLite format 3" not in raw  # SQLite's header is encrypted too
    assert (len(raw) - fmt.HEADER_SIZE) % 4096 == 0
    assert marker("row").encode() not in raw
    c = open_enc(p)
    assert q(c, "select a, b from t") == [(marker("row"), 42)]
    assert q(c, "pragma integrity_check") == [("ok",)]
    c.close()


def test_wrong_key_fails_at_open(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a)")
    c.close()
    with pytest.raises(WrongKeyError) as ei:
        open_enc(p, OTHER_KEY)
    assert isinstance(ei.value, DatabaseError)
    assert OTHER_KEY.hex() not in str(ei.value)


def test_missing_key_says_encrypted(tmp_path):
    p = tmp_path / "a.db"
    open_enc(p).close()
    with pytest.raises(KeyRequiredError, match="encrypted.*key="):
        open_enc(p, None)


def test_key_on_plaintext_file(tmp_path):
    p = tmp_path / "plain.db"
    c = apsw.Connection(str(p))
    c.execute("create table t(a); insert into t values(1)")
    c.close()
    with pytest.raises(NotEncryptedError, match=r"heliosdb\.encrypt\(plain, encrypted, key\)"):
        open_enc(p)
    # Without a key it is an ordinary plaintext database.
    c = open_enc(p, None)
    assert q(c, "select * from t") == [(1,)]
    assert crypto.storage_info(c)["encryption_enabled"] is False
    assert crypto.is_encrypted(c) is False
    c.close()
    c = open_enc(tmp_path / "enc.db")
    assert crypto.is_encrypted(c) is True
    c.close()


def test_memory_database_with_key(tmp_path):
    c = open_enc(":memory:")
    q(c, "create table t(a)")
    c.close()
    assert list(tmp_path.iterdir()) == []


def test_passphrase_and_kdf_profile(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p, Key.passphrase("correct horse", profile="test"))
    q(c, "create table t(a)")
    info = crypto.storage_info(c)
    c.close()
    assert info["kdf"] == "argon2id"
    assert info["key_slots"][0]["memory_kib"] == 64
    c = open_enc(p, Key.passphrase("correct horse"))  # parameters come from the header
    c.close()
    with pytest.raises(WrongKeyError):
        open_enc(p, Key.passphrase("wrong horse"))
    with pytest.raises(WrongKeyError, match="no raw-key slot"):
        open_enc(p, KEY)


def test_default_argon2_profile(tmp_path):
    p = tmp_path / "a.db"
    open_enc(p, "a passphrase").close()  # str -> Argon2id default profile
    hdr = fmt.read_header(p.read_bytes()[:4096])
    s = hdr.slots[0]
    assert (s.time_cost, s.memory_kib, s.parallelism) == (3, 65536, 4)
    open_enc(p, "a passphrase").close()


def test_key_constructors(tmp_path, monkeypatch):
    raw = bytes(range(32))
    (tmp_path / "k.bin").write_bytes(raw)
    (tmp_path / "k.hex").write_text(raw.hex() + "\n")
    monkeypatch.setenv("HX_KEY", raw.hex())
    keys = [Key.from_file(tmp_path / "k.bin"), Key.from_file(tmp_path / "k.hex"),
            Key.from_env("HX_KEY"), Key.from_hex(raw.hex()), Key.from_bytes(bytearray(raw))]
    for k in keys:
        assert bytes(k.secret()) == raw
        assert raw.hex() not in repr(k) and "hidden" in repr(k)
    k = keys[0]
    buf = k.secret()
    k.close()
    assert k.closed and not any(buf)
    with pytest.raises(ValueError):
        Key.from_hex("zz" * 32)
    with pytest.raises(ValueError):
        Key.from_bytes(b"short")


def test_key_from_config(tmp_path, monkeypatch):
    from types import SimpleNamespace as NS

    monkeypatch.setenv("HX_PW", "pw from env")
    enc = NS(enabled=True, algorithm="aes-256-gcm", kdf_profile="test",
             key_source=NS(kind="passphrase_env", value="HX_PW"),
             rotation_interval_days=90, nonce_warning_fraction=0.5)
    p = tmp_path / "a.db"
    c = open_enc(p, None, encryption=enc)
    q(c, "create table t(a)")
    assert crypto.storage_info(c)["key_slots"][0]["memory_kib"] == 64
    c.close()
    with pytest.raises(KeyRequiredError):
        open_enc(p, None)
    (tmp_path / "k").write_text(KEY.hex())
    enc2 = NS(enabled=True, algorithm="aes-256-gcm", kdf_profile="test",
              key_source=NS(kind="file", value=str(tmp_path / "k")))
    c = open_enc(tmp_path / "b.db", None, encryption=enc2)
    c.close()
    open_enc(tmp_path / "b.db", KEY).close()


def test_storage_info_counts_encryptions(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a)")
    before = crypto.storage_info(c)["encryptions_under_current_key"]
    q(c, "insert into t select zeroblob(3000) from (with recursive g(value) as (select 1 union all select value + 1 from g limit 50) select value from g)")
    info = crypto.storage_info(c)
    assert info["encryptions_under_current_key"] >= before + 50
    assert info["reserve_bytes"] == 32 and info["format_version"] == fmt.HEADER_VERSION == 2
    assert info["encryption_algorithm"] == "AES-256-GCM" and info["page_size"] == 4096
    c.close()
    # Persisted in the header, not just counted in memory.
    persisted = fmt.read_header(p.read_bytes()[:4096]).counter
    assert persisted >= before + 50
    c = open_enc(p)
    assert crypto.storage_info(c)["encryptions_under_current_key"] == persisted
    c.close()


def test_nonce_warning(tmp_path):
    from types import SimpleNamespace as NS

    p = tmp_path / "a.db"
    open_enc(p).close()
    raw = bytearray(p.read_bytes())
    raw[56:64] = (3 * 2 ** 30).to_bytes(8, "big")  # 75% of 2^32
    p.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="rotate"):
        c = open_enc(p, encryption=NS(enabled=True, algorithm="aes-256-gcm", key_source=None,
                                      kdf_profile="test", nonce_warning_fraction=0.5))
    assert crypto.storage_info(c)["nonce_warning"] is True
    c.close()


# ---------------------------------------------------------- no plaintext on disk ---

def _fill(c, tag: str, n: int = 100) -> None:
    q(c, "create table if not exists t(id integer primary key, a text, b blob)")
    q(c, "create index if not exists ia on t(a)")
    q(c, "insert into t(a, b) select ?1 || value, ?2 || randomblob(8000) || ?2 "
         "from (with recursive g(value) as (select 1 union all select value + 1 from g limit ?3) select value from g)", (marker(tag + "-idx"), marker(tag + "-ovf").encode(), n))


@pytest.mark.parametrize("keyed", [True, False], ids=["encrypted", "control-plain"])
@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_no_plaintext_in_any_file(tmp_path, mode, keyed):
    p = tmp_path / "a.db"
    c = open_enc(p, KEY if keyed else None)
    q(c, f"pragma journal_mode={mode}")
    q(c, "pragma wal_autocheckpoint=0")
    q(c, "pragma cache_size=5")  # spill dirty pages mid-transaction
    _fill(c, "base")
    q(c, "begin")
    q(c, "update t set a = a || ?", (marker("upd"),))
    _fill(c, "tx", 40)
    # Transaction open: the journal (or the WAL) holds page images now.
    side = [f for f in files_under(tmp_path) if f != str(p)]
    assert side, "expected a journal or WAL file"
    if not keyed:  # the control: the same scan finds the markers in the side file
        assert hits(side, [b"HXM-"])
        c.close()
        return
    assert hits(files_under(tmp_path), [b"HXM-"]) == []
    q(c, "commit")
    assert hits(files_under(tmp_path), [b"HXM-"]) == []
    c.close()
    c = open_enc(p)
    assert q(c, "select count(*) from t where a like '%upd%'") == [(100,)]
    c.close()


def _sort_spill(c, tag):
    q(c, "pragma temp_store=FILE")
    q(c, "pragma cache_size=10")
    q(c, "create table s(a)")
    q(c, "insert into s select ?1 || hex(randomblob(60)) from (with recursive g(value) as (select 1 union all select value + 1 from g limit 30000) select value from g)",
      (marker(tag),))
    cur = c.execute("select a from s order by substr(a, 20)")
    first = next(cur)
    return cur, first


def _fd_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _deleted_fd_files():
    return [f for f in open_fd_files() if os.readlink(f).endswith("(deleted)")]


def test_sorter_spill_and_temp_files_encrypted(tmp_path):
    c = open_enc(tmp_path / "a.db")
    cur, first = _sort_spill(c, "sort")
    assert first[0].startswith(marker("sort"))
    temps = _deleted_fd_files()
    assert temps, "the sort should have spilled to temp files"
    assert hits(temps, [marker("sort").encode()]) == []
    cur.close()
    # A temp table, its index and a transient index, all in temp files.
    q(c, "create temp table tt as select a from s")
    q(c, "create index temp.ti on tt(a)")
    cur = c.execute("select distinct a from tt order by a")
    next(cur)
    assert hits(_deleted_fd_files() + files_under(tmp_path), [marker("sort").encode()]) == []
    cur.close()
    c.close()


def test_sorter_spill_control_is_plaintext(tmp_path):
    c = open_enc(tmp_path / "a.db", None)
    cur, _ = _sort_spill(c, "ctl")
    assert hits(_deleted_fd_files(), [marker("ctl").encode()])
    cur.close()
    c.close()


@pytest.mark.parametrize("keyed", [True, False], ids=["encrypted", "control-plain"])
def test_statement_journal_encrypted(tmp_path, keyed):
    # Temp files other tests left open in this process (a control connection not yet
    # collected) are not this test's: only files opened from here on are scanned.
    gc.collect()
    before = {_fd_identity(f) for f in _deleted_fd_files()}
    c = open_enc(tmp_path / "a.db", KEY if keyed else None)
    q(c, "pragma temp_store=FILE")
    q(c, "create table u(id integer primary key, a text unique)")
    q(c, "insert into u(a) select ? || value || hex(randomblob(500)) from (with recursive g(value) as (select 1 union all select value + 1 from g limit 400) select value from g)",
      (marker("stmt"),))
    q(c, "insert into u(id, a) values (100000, 'clash')")
    q(c, "begin")
    q(c, "update u set a = a || 'x'")
    with pytest.raises(DatabaseError):
        # Fails on the last row: the statement journal holds every changed page.
        q(c, "update u set a = case when id = 100000 then (select a from u where id = 1) "
             "else a || ? end", (marker("stmt2"),))
    temps = [f for f in _deleted_fd_files() if _fd_identity(f) not in before]
    assert temps, "the statement journal should have spilled to a temp file"
    found = hits(temps + files_under(tmp_path), [b"HXM-"])
    assert (found == []) if keyed else found  # the control proves the scan can see it
    q(c, "commit")
    assert q(c, "select count(*) from u where a like '%x'") == [(401,)]
    c.close()


def test_super_journal_and_attach(tmp_path):
    main, aux = tmp_path / "main.db", tmp_path / "aux.db"
    c = open_enc(main)
    crypto.attach(c, str(aux), "aux", OTHER_KEY)
    q(c, "create table t(a)")
    q(c, "create table aux.t(a)")
    q(c, "begin")
    q(c, "insert into main.t values(?)", (marker("m"),))
    q(c, "insert into aux.t values(?)", (marker("x"),))
    q(c, "commit")  # two databases: a super-journal is written
    assert hits(files_under(tmp_path), [b"HXM-"]) == []
    c.close()
    crypto.unregister_attach_key(str(aux))
    # The attached file has its own key, not the main one.
    with pytest.raises(WrongKeyError):
        open_enc(aux, KEY)
    c = open_enc(aux, OTHER_KEY)
    assert q(c, "select a from t") == [(marker("x"),)]
    c.close()
    assert fmt.read_header(main.read_bytes()[:4096]).file_id != fmt.read_header(aux.read_bytes()[:4096]).file_id


def test_sql_attach_needs_registered_key(tmp_path):
    main, aux = tmp_path / "main.db", tmp_path / "aux.db"
    c0 = open_enc(aux, OTHER_KEY)
    q(c0, "create table t(a); insert into t values(7)")
    c0.close()
    c = open_enc(main)
    with pytest.raises(EncryptionError):
        q(c, "attach ? as aux", (str(aux),))
    crypto.register_attach_key(str(aux), OTHER_KEY)
    try:
        q(c, "attach ? as aux", (str(aux),))
        assert q(c, "select a from aux.t") == [(7,)]
        q(c, "detach aux")
    finally:
        crypto.unregister_attach_key(str(aux))
    c.close()


# ----------------------------------------------------------- page sizes, vacuum ---

def _vacuum_into(c, out, key) -> None:
    """VACUUM INTO ``out``, encrypted under ``key`` (registered for that file only while
    the copy is written)."""
    crypto.register_attach_key(str(out), key)
    try:
        q(c, "vacuum into ?", (str(out),))
    finally:
        crypto.unregister_attach_key(str(out))


@pytest.mark.parametrize("page_size", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
def test_page_sizes(tmp_path, page_size):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, f"pragma page_size={page_size}")
    _fill(c, "ps", 30)
    info = crypto.storage_info(c)
    assert info["page_size"] == page_size and info["reserve_bytes"] == 32
    c.close()
    raw = p.read_bytes()
    assert (len(raw) - 4096) % page_size == 0
    assert b"HXM-" not in raw
    assert fmt.read_header(raw[:4096]).page_size == page_size
    assert_reopens(p, 30)


def test_vacuum(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    _fill(c, "vac", 50)
    q(c, "delete from t where id % 2 = 0")
    size_before = p.stat().st_size
    q(c, "vacuum")
    assert p.stat().st_size < size_before
    assert hits(files_under(tmp_path), [b"HXM-"]) == []
    c.close()
    c = open_enc(p)
    assert q(c, "select count(*) from t") == [(25,)]
    assert q(c, "pragma integrity_check") == [("ok",)]
    assert crypto.storage_info(c)["reserve_bytes"] == 32
    c.close()


def test_vacuum_to_another_page_size_is_refused_cleanly(tmp_path):
    p, out = tmp_path / "a.db", tmp_path / "big.db"
    c = open_enc(p)
    _fill(c, "vps", 20)
    q(c, "pragma page_size=8192")
    with pytest.raises(EncryptionError, match="VACUUM INTO"):
        q(c, "vacuum")
    assert q(c, "select count(*) from t") == [(20,)]
    assert q(c, "pragma integrity_check") == [("ok",)]
    # The supported way: VACUUM INTO a new encrypted file, which takes the new size.
    _vacuum_into(c, out, OTHER_KEY)
    c.close()
    c = open_enc(out, OTHER_KEY)
    assert q(c, "pragma page_size") == [(8192,)]
    assert q(c, "select count(*) from t") == [(20,)]
    assert q(c, "pragma integrity_check") == [("ok",)]
    c.close()


def test_vacuum_into_refused_without_key_and_encrypted_with_one(tmp_path):
    p, out = tmp_path / "a.db", tmp_path / "copy.db"
    c = open_enc(p)
    _fill(c, "vi", 10)
    with pytest.raises(DatabaseError):
        q(c, "vacuum into ?", (str(out),))
    assert not out.exists() or out.stat().st_size == 0
    _vacuum_into(c, out, OTHER_KEY)
    c.close()
    assert b"HXM-" not in out.read_bytes()
    c = open_enc(out, OTHER_KEY)
    assert q(c, "select count(*) from t") == [(10,)]
    c.close()


# ------------------------------------------------- connections and processes ---

CHILD = textwrap.dedent("""
    import sys, apsw
    from helpers.enc import open_enc, q, KEY
    c = open_enc(sys.argv[1])
    c.setbusytimeout(10000)
    for i in range(20):
        q(c, "insert into t(a) values(?)", (sys.argv[2] + str(i),))
    print(q(c, "select count(*) from t")[0][0])
    c.close()
""")


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_two_connections_and_a_second_process(tmp_path, mode):
    p = tmp_path / "a.db"
    c1 = open_enc(p)
    q(c1, f"pragma journal_mode={mode}")
    q(c1, "create table t(id integer primary key, a)")
    c2 = open_enc(p)
    c1.setbusytimeout(10000)
    c2.setbusytimeout(10000)
    q(c1, "insert into t(a) values('one')")
    assert q(c2, "select a from t") == [("one",)]
    q(c2, "insert into t(a) values('two')")
    assert q(c1, "select count(*) from t") == [(2,)]
    r = run_python(CHILD, str(p), "child")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) == 22
    assert q(c1, "select count(*) from t") == [(22,)]
    assert q(c2, "pragma integrity_check") == [("ok",)]
    c1.close()
    c2.close()


@pytest.mark.parametrize("keyed", [True, False], ids=["encrypted", "control-plain"])
def test_temp_database_with_key_is_encrypted(tmp_path, keyed):
    c = open_enc("", KEY if keyed else None)  # an on-disk temporary database
    q(c, "pragma cache_size=5")
    q(c, "create table t(a)")
    q(c, "insert into t select ? || hex(randomblob(400)) from (with recursive g(value) as (select 1 union all select value + 1 from g limit 2000) select value from g)", (marker("tmpdb"),))
    temps = _deleted_fd_files()
    assert temps
    found = hits(temps, [marker("tmpdb").encode()])
    assert (found == []) if keyed else found
    assert q(c, "select count(*) from t") == [(2000,)]
    c.close()


def test_unavailable_native_refuses_encrypted(tmp_path, monkeypatch):
    p = tmp_path / "a.db"
    open_enc(p).close()
    code = textwrap.dedent(f"""
        from helpers.enc import open_enc
        from heliosdb.errors import EncryptionUnavailableError
        try:
            open_enc({str(p)!r})
        except EncryptionUnavailableError as e:
            print("refused:", e)
    """)
    r = run_python(code, env={"HELIOSDB_PURE": "1", "HELIOSDB_IMPL": None})
    assert "refused:" in r.stdout and "HELIOSDB_PURE" in r.stdout, r.stderr


def test_mmap_is_never_used(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "pragma mmap_size=268435456")
    _fill(c, "mm", 40)
    c.close()
    c = open_enc(p)
    q(c, "pragma mmap_size=268435456")
    assert q(c, "select count(*) from t where a like 'HXM%'") == [(40,)]
    maps = open("/proc/self/maps").read()
    assert str(p) not in maps
    c.close()


def test_nonces_never_repeat(tmp_path):
    """Every page ever written gets a fresh nonce: collect the nonces in the file after
    many rewrites of the same pages, and the nonces seen across the rewrites."""
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a)")
    q(c, "insert into t values(0)")
    seen = set()
    for i in range(60):
        q(c, "update t set a = ?", (i,))
        raw = p.read_bytes()
        for off in range(4096, len(raw), 4096):
            seen.add(raw[off + 4096 - 28:off + 4096 - 16])
    c.close()
    # Pages 1 and 2 are rewritten by every update: 60 x 2 distinct nonces, at least.
    assert len(seen) >= 120


def test_uri_filename(tmp_path):
    p = tmp_path / "a b.db"
    uri = "file:" + str(p).replace(" ", "%20") + "?cache=private"
    flags = FLAGS | apsw.SQLITE_OPEN_URI
    c = open_enc(uri, flags=flags, uri=True)
    q(c, "create table t(a)")
    q(c, "insert into t values(1)")
    c.close()
    assert p.read_bytes().startswith(fmt.MAGIC)
    c = open_enc(p)
    assert q(c, "select a from t") == [(1,)]
    c.close()
    with pytest.raises(Exception, match="vfs"):
        open_enc(uri + "&vfs=unix", flags=flags, uri=True)


def test_key_never_in_errors_or_filenames(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a)")
    assert KEY.hex() not in c.filename and KEY.hex() not in repr(c)
    c.close()
    try:
        open_enc(p, OTHER_KEY)
    except WrongKeyError as e:
        text = str(e) + repr(e)
        assert OTHER_KEY.hex() not in text and KEY.hex() not in text


def test_new_database_spilling_before_page_1_is_written(tmp_path):
    """A first transaction larger than the cache spills pages 2.. before page 1."""
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "pragma cache_size=10")
    q(c, "begin")
    q(c, "create table t(id integer primary key, a text)")
    q(c, "insert into t select value, ? || value from (with recursive g(value) as "
         "(select 1 union all select value + 1 from g limit 20000) select value from g)",
      (marker("spill"),))
    q(c, "commit")
    c.close()
    assert marker("spill").encode() not in p.read_bytes()
    assert_reopens(p, 20000)


def test_threads_each_with_a_connection(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "pragma journal_mode=wal")
    q(c, "create table t(th, i)")
    c.close()

    def work(n):
        conn = open_enc(p)
        conn.setbusytimeout(20000)
        for i in range(30):
            q(conn, "insert into t values(?, ?)", (n, i))
            q(conn, "select count(*) from t")
        conn.close()

    assert run_threads(work, [(n,) for n in range(4)]) == []
    c = open_enc(p)
    assert q(c, "select count(*) from t") == [(120,)]
    c.close()


def test_unwritable_directory_is_an_operational_error(tmp_path):
    from heliosdb.errors import OperationalError

    with pytest.raises(OperationalError, match="unable to open"):
        open_enc(tmp_path / "no-such-dir" / "a.db")


def test_encryption_count_persisted_without_sync(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "pragma synchronous=off")
    q(c, "create table t(a)")
    for i in range(10):
        q(c, "insert into t values(?)", (i,))
    # Not closed: the count must already be in the header.
    assert fmt.read_header(p.read_bytes()[:4096]).counter >= 10
    c.close()


def test_read_only_open(tmp_path):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "create table t(a)")
    q(c, "insert into t values(1)")
    c.close()
    r = open_enc(p, flags=apsw.SQLITE_OPEN_READONLY)
    assert q(r, "select a from t") == [(1,)]
    with pytest.raises(DatabaseError):
        q(r, "insert into t values(2)")
    r.close()
    with pytest.raises(DatabaseError):
        open_enc(tmp_path / "missing.db", flags=apsw.SQLITE_OPEN_READONLY)
    assert not (tmp_path / "missing.db").exists()


def test_demo_runs():
    import io

    from heliosdb.crypto import demo

    out = io.StringIO()
    assert demo.main(out) == 0
    text = out.getvalue()
    assert "WrongKeyError" in text and "KeyRequiredError" in text
    assert "in the file: False" in text


def test_passphrase_stretched_once_while_open(tmp_path, monkeypatch):
    import heliosdb.crypto as hc

    calls = []
    real = hc.derive_kek

    def counting(*a, **kw):
        calls.append(a[1])
        return real(*a, **kw)

    monkeypatch.setattr(hc, "derive_kek", counting)
    p = tmp_path / "a.db"
    pw = Key.passphrase("pool passphrase", profile="test")
    c1 = open_enc(p, pw)
    q(c1, "create table t(a)")
    assert len(calls) == 1                      # creation wraps the key once
    c2 = open_enc(p, pw)                        # c1 still open: no second stretch
    c3 = open_enc(p, Key.passphrase("pool passphrase"))
    assert len(calls) == 1
    with pytest.raises(WrongKeyError):          # a wrong passphrase never hits the cache
        open_enc(p, Key.passphrase("not it"))
    assert len(calls) == 2
    q(c3, "insert into t values(1)")
    assert q(c2, "select a from t") == [(1,)]
    for c in (c1, c2, c3):
        c.close()
    c4 = open_enc(p, pw)                        # everything closed: stretched again
    assert len(calls) == 3
    c4.close()
    assert crypto._unlock_cache == {}


CREATOR = textwrap.dedent("""
    import sys
    from helpers.enc import open_enc, q
    c = open_enc(sys.argv[1])
    c.setbusytimeout(20000)
    q(c, "create table if not exists t(who)")
    q(c, "insert into t values(?)", (sys.argv[2],))
    c.close()
""")


def test_two_processes_create_the_same_file(tmp_path):
    import subprocess

    p = tmp_path / "race.db"
    procs = [subprocess.Popen([__import__("sys").executable, "-c", CREATOR, str(p), str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for pr in procs:
        _out, err = pr.communicate(timeout=60)
        assert pr.returncode == 0, err
    c = open_enc(p)
    assert sorted(q(c, "select who from t")) == [("0",), ("1",), ("2",)]
    c.close()


@pytest.mark.parametrize("mode", ["wal", "delete", "memory", "off"])
def test_exclusive_locking_and_other_journal_modes(tmp_path, mode):
    p = tmp_path / "a.db"
    c = open_enc(p)
    q(c, "pragma locking_mode=exclusive")
    q(c, f"pragma journal_mode={mode}")
    _fill(c, "ex", 20)
    assert hits(files_under(tmp_path), [b"HXM-"]) == []
    c.close()
    assert_reopens(p, 20)
