"""The file header and docs/FORMAT.md's worked example (decoded with the documented key)."""
from __future__ import annotations

import pathlib
import re

import pytest

from heliosdb import native
from heliosdb.crypto import Key, format as fmt, pages
from heliosdb.crypto import unlock_slot
from heliosdb.errors import CorruptHeaderError, WrongKeyError

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def _blocks():
    text = DOC.read_text()
    key = bytes.fromhex(re.search(r"key \(raw, hex\): ([0-9a-f]{64})", text).group(1))
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    dumps = []
    for b in blocks:
        lines = [ln for ln in b.splitlines() if re.match(r"^[0-9a-f]{8}  ", ln)]
        if lines:
            dumps.append(bytes.fromhex("".join(ln[10:].replace(" ", "") for ln in lines)))
    return key, dumps


def test_format_doc_example_decodes():
    key, (head, page1) = _blocks()
    header = fmt.read_header(head + bytes(fmt.HEADER_SIZE - len(head)))
    assert header.page_size == 512 and len(page1) == 512
    dek, slot = unlock_slot("example", header, Key.from_bytes(key))
    plain = pages.decrypt_page(dek, header.file_id, 1, page1)
    assert plain.startswith(b"SQLite format 3\x00")
    assert b"CREATE TABLE t(secret text)" in plain
    assert b"SQLite" not in page1 and b"CREATE" not in page1
    with pytest.raises(WrongKeyError):
        unlock_slot("example", header, Key.from_bytes(bytes(32)))


def _tampered_headers(raw: bytes):
    """(offset, header) for one bit flipped in each of a sample of the authenticated
    fields and slot parameters of the header ``raw``, where the header still parses."""
    for off in (20 + 3, 33, 128 + 7, 128 + 20, 128 + 40, 128 + 60):
        bad = bytearray(raw)
        bad[off] ^= 1
        try:
            header = fmt.read_header(bytes(bad))
        except ValueError:
            continue
        yield off, header


def test_header_roundtrip_and_tamper():
    dek = bytearray(range(32))
    h = fmt.new_header(dek, 4096)
    k = Key.from_bytes(bytes(range(100, 132)))
    from heliosdb.crypto import new_slot

    h.slots.append(new_slot(h, 0, k, dek))
    h.slots.append(new_slot(h, 1, Key.passphrase("pw", profile="test"), dek))
    raw = h.to_bytes()
    assert len(raw) == 4096 and raw.startswith(fmt.MAGIC)
    h2 = fmt.read_header(raw)
    assert unlock_slot("x", h2, k)[0] == dek
    assert unlock_slot("x", h2, Key.passphrase("pw"))[0] == dek
    # Any change to the authenticated fields or slot parameters is caught. Version 2
    # (issue 23): by the slot digest, before any key derivation, as a damaged header
    # naming the field (version 1 reported it as a wrong key, below).
    for off, hb in _tampered_headers(raw):
        with pytest.raises(CorruptHeaderError, match="digest") as ei:
            unlock_slot("x", hb, k)
        assert ei.value.file == "x" and ei.value.field == "digest"
    # A version 1 header: the slot's GCM tag catches the same changes.
    h1 = fmt.new_header(dek, 4096)
    h1.version = 1
    h1.kcv = fmt.key_check_value(dek, h1.file_id)
    h1.slots.append(new_slot(h1, 0, k, dek))
    raw1 = h1.to_bytes()
    assert unlock_slot("x", fmt.read_header(raw1), k)[0] == dek
    for off, hb in _tampered_headers(raw1):
        # A KDF parameter of a raw-key slot must be 0: checked before deriving.
        with pytest.raises(CorruptHeaderError if off == 128 + 7 else WrongKeyError):
            unlock_slot("x", hb, k)
    with pytest.raises(ValueError):
        fmt.read_header(b"SQLite format 3\x00" + bytes(4080))


def test_key_check_value_catches_a_foreign_dek():
    dek = bytearray(range(32))
    h = fmt.new_header(dek)
    assert h.key_check(dek) == h.kcv  # version 2 (issue 23): also covers flags, generation
    assert h.key_check(bytes(32)) != h.kcv
    h.generation += 1
    assert h.key_check(dek) != h.kcv
    h.generation -= 1
    h.version = 1
    assert h.key_check(dek) == fmt.key_check_value(dek, h.file_id)
    assert fmt.key_check_value(bytes(32), h.file_id) != fmt.key_check_value(dek, h.file_id)


@pytest.mark.skipif(not native.available(), reason="native extension not built")
def test_python_decrypts_what_c_wrote(tmp_path):
    """Decrypt a whole database written by the C shim with the pure-Python transform."""
    import apsw

    from helpers.enc import KEY, open_enc, q
    from heliosdb.crypto.offline import decrypt_copy

    for ps in (512, 4096, 65536):
        src, dst = tmp_path / f"e{ps}.db", tmp_path / f"p{ps}.db"
        c = open_enc(src)
        q(c, f"pragma page_size={ps}")
        q(c, "create table t(a, b)")
        q(c, "create index ib on t(b)")
        q(c, "insert into t select value, randomblob(value % 3000) from (with recursive "
             "g(value) as (select 1 union all select value + 1 from g limit 300) select value from g)")
        want = q(c, "select a, b from t order by a")
        c.close()
        assert decrypt_copy(str(src), str(dst), KEY) == (src.stat().st_size - 4096) // ps
        plain = apsw.Connection(str(dst))
        assert plain.execute("select a, b from t order by a").fetchall() == want
        assert plain.execute("pragma integrity_check").fetchall() == [("ok",)]
        plain.close()


@pytest.mark.skipif(not native.available(), reason="native extension not built")
def test_offline_reader_names_a_corrupt_page(tmp_path):
    from helpers.enc import KEY, open_enc, q
    from heliosdb.crypto.offline import iter_pages
    from heliosdb.errors import CorruptPageError

    src = tmp_path / "e.db"
    c = open_enc(src)
    q(c, "create table t(a)")
    q(c, "insert into t select randomblob(3000) from (with recursive g(v) as "
         "(select 1 union all select v + 1 from g limit 10) select v from g)")
    c.close()
    raw = bytearray(src.read_bytes())
    raw[4096 + 3 * 4096 + 9] ^= 0x80  # page 4
    src.write_bytes(bytes(raw))
    with pytest.raises(CorruptPageError) as ei:
        list(iter_pages(str(src), KEY))
    assert ei.value.page == 4
