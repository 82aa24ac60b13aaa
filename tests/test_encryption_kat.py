"""Known-answer tests: the page transform in C and in Python, and AES-GCM itself."""
from __future__ import annotations

import json
import pathlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from heliosdb import native
from heliosdb.crypto import pages

VECTORS = json.loads((pathlib.Path(__file__).parent / "vectors" / "page_kat.json").read_text())
KEY = bytes.fromhex(VECTORS["key"])
FILE_ID = bytes.fromhex(VECTORS["file_id"])
needs_native = pytest.mark.skipif(not native.available(), reason="native extension not built")

# NIST SP 800-38D test vectors for AES-256-GCM. Provenance: McGrew & Viega, "The Galois/
# Counter Mode of Operation (GCM)", test cases 13, 14 and 16, the vectors NIST publishes
# with SP 800-38D (also in OpenSSL's test/recipes/30-test_evp_data/evpciph_aes_common.txt).
NIST = [
    dict(key="00" * 32, iv="00" * 12, aad="", pt="", ct="",
         tag="530f8afbc74536b9a963b4f1c4cb738b"),
    dict(key="00" * 32, iv="00" * 12, aad="", pt="00" * 16,
         ct="cea7403d4d606b6e074ec5d3baf39d18", tag="d0d1c8a799996bf0265b98b5d48ab919"),
    dict(key="feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
         iv="cafebabefacedbaddecaf888", aad="feedfacedeadbeeffeedfacedeadbeefabaddad2",
         pt="d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
         ct="522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
         tag="76fc6ece0f4e1768cddf8853bb2d551b"),
]


@pytest.mark.parametrize("v", NIST, ids=["tc13", "tc14", "tc16"])
def test_nist_gcm_vector_python(v):
    out = AESGCM(bytes.fromhex(v["key"])).encrypt(bytes.fromhex(v["iv"]), bytes.fromhex(v["pt"]),
                                                  bytes.fromhex(v["aad"]) or None)
    assert out.hex() == v["ct"] + v["tag"]


@needs_native
@pytest.mark.parametrize("v", NIST, ids=["tc13", "tc14", "tc16"])
def test_nist_gcm_vector_c(v):
    ffi, lib = native.ffi, native.lib
    pt, aad = bytes.fromhex(v["pt"]), bytes.fromhex(v["aad"])
    out, tag = ffi.new("unsigned char[]", max(1, len(pt))), ffi.new("unsigned char[16]")
    assert lib.heliosdb_gcm_encrypt_raw(bytes.fromhex(v["key"]), bytes.fromhex(v["iv"]), aad,
                                        len(aad), pt, len(pt), out, tag) == 1
    assert ffi.buffer(out, len(pt))[:].hex() == v["ct"]
    assert ffi.buffer(tag, 16)[:].hex() == v["tag"]


def _vec_ids():
    return [f"p{v['page_size']}-pg{v['pgno']}-d{v['domain']}" for v in VECTORS["vectors"]]


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=_vec_ids())
def test_python_transform_matches_vectors(v):
    page, nonce = bytes.fromhex(v["page"]), bytes.fromhex(v["nonce"])
    got = pages.encrypt_page(KEY, FILE_ID, v["pgno"], page, nonce, v["domain"])
    assert got.hex() == v["expected"]
    back = pages.decrypt_page(KEY, FILE_ID, v["pgno"], got, v["domain"])
    n = len(page) - pages.OVERHEAD
    assert back[:n] == page[:n] and back[n:] == bytes(28)


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=_vec_ids())
def test_vectors_follow_the_documented_construction(v):
    """Rebuild each vector from AES-GCM and the AAD layout alone (not via pages.py)."""
    page, nonce = bytes.fromhex(v["page"]), bytes.fromhex(v["nonce"])
    n = len(page) - 28
    aad = b"HDB1" + FILE_ID + struct.pack(">I", 1) + bytes([v["domain"]]) + struct.pack(">I", v["pgno"])
    sealed = AESGCM(KEY).encrypt(nonce, page[:n], aad)
    assert (sealed[:n] + nonce + sealed[n:]).hex() == v["expected"]


@needs_native
@pytest.mark.parametrize("v", VECTORS["vectors"], ids=_vec_ids())
def test_c_transform_matches_vectors(v):
    ffi, lib = native.ffi, native.lib
    page, nonce, size = bytes.fromhex(v["page"]), bytes.fromhex(v["nonce"]), v["page_size"]
    out = ffi.new("unsigned char[]", size)
    assert lib.heliosdb_page_encrypt(KEY, FILE_ID, v["domain"], v["pgno"], nonce, page, out, size) == 1
    assert ffi.buffer(out, size)[:].hex() == v["expected"]
    back = ffi.new("unsigned char[]", size)
    assert lib.heliosdb_page_decrypt(KEY, FILE_ID, v["domain"], v["pgno"], out, back, size) == 1
    n = size - 28
    assert ffi.buffer(back, size)[:] == page[:n] + bytes(28)


@needs_native
@pytest.mark.parametrize("change", ["pgno", "domain", "file_id", "byte", "key"])
def test_c_and_python_reject_the_same_alterations(change):
    v = VECTORS["vectors"][1]
    stored = bytearray.fromhex(v["expected"])
    key, fid, pgno, domain = KEY, FILE_ID, v["pgno"], v["domain"]
    if change == "pgno":
        pgno += 1
    elif change == "domain":
        domain = 2
    elif change == "file_id":
        fid = bytes(16)
    elif change == "byte":
        stored[100] ^= 1
    else:
        key = bytes(32)
    with pytest.raises(pages.PageAuthError):
        pages.decrypt_page(key, fid, pgno, bytes(stored), domain)
    ffi, lib = native.ffi, native.lib
    out = ffi.new("unsigned char[]", len(stored))
    assert lib.heliosdb_page_decrypt(key, fid, domain, pgno, bytes(stored), out, len(stored)) == 0


def test_all_zero_page_is_not_decrypted():
    with pytest.raises(pages.PageAuthError, match="all zeros"):
        pages.decrypt_page(KEY, FILE_ID, 1, bytes(4096))
