"""One URI parser, SQLite's rules: HeliosDB opens the file SQLite opens, or refuses.

Every URI of the table is opened by plain APSW (SQLite itself) and by HeliosDB with a
key, each in a fresh directory; the file each names (``Connection.db_filename("main")``)
must be the same, and whatever HeliosDB opens with a key must be an encrypted file.
"""
from __future__ import annotations

import os

import apsw
import pytest

import heliosdb
from heliosdb import errors
from heliosdb.crypto import format as fmt
from heliosdb.crypto.uri import OPEN_CREATE, OPEN_READWRITE, OPEN_URI, UriError, parse_filename

from helpers.enc import KEY

pytestmark = pytest.mark.skipif(not heliosdb.native_available(), reason="needs the C extension")

FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI

URIS = [
    "file:a.db",
    "file:a.db?mode=rwc",
    "file:a.db?mode=memory&mode=rwc",       # the leak of issue 23: SQLite takes the last
    "file:a.db?mode=rwc&mode=memory",
    "file:a.db?mode=memory",
    "file:a.db?mo%64e=memory",              # percent-decoded key
    "file:a.db?mode=%6demory",              # percent-decoded value
    "file:a%20b.db",
    "file:a%2Fb.db?cache=private",
    "file:a.db?cache=shared",
    "file:a.db?cache=private&cache=shared",
    "file:a.db#mode=memory",                # a fragment ends the URI
    "file:a.db?x=1#&mode=memory",
    "file:a.db?&&mode=memory",              # empty keys are skipped
    "file:a.db?=memory&mode=rwc",
    "file:a.db?mode",                       # a key without a value
    "file:a.db?mode%00=memory",             # %00 ends the key
    "file:a.db%00.x?mode=rwc",              # %00 ends the path
    "file:a.db?mode=rwc%00memory",
    "file:a.db?mode=memory+",               # '+' is not a space: an invalid mode
    "file:a.db?mode=ro",
    "file:a.db?mode=rw",
    "file:a.db?vfs=unix",
    "file:a.db?vfs=memdb",
    "file:a.db?vfs=unix&vfs=heliosdb",
    "file:a.db?immutable=1",
    "file:a.db?immutable=0&immutable=1",
    "file:a.db?nolock=1",
    "file:a.db?psow=0",
    "file:a.db?foo=bar",
    "file::memory:",
    "file:",
    "file:?mode=rwc",
    "file://localhost/{d}/a.db",
    "file:///{d}/a.db?mode=memory&mode=rwc",
    "file://evil/{d}/a.db",
    "file:{d}/a.db?mode=rwc&mode=memory&cache=shared",
    "file:%61.db",
    "file:a.db?mode=ro&mode=rwc",
    "file:a.db?mode=bogus",
    "a.db?mode=memory",                     # not a URI: a plain filename
    "FILE:a.db?mode=memory",                # case-sensitive scheme: a plain filename
]


def _sqlite_opens(uri: str, d: str):
    """(filename SQLite opens relative to d or '' for memory/temp, or 'error')."""
    try:
        c = apsw.Connection(uri, flags=FLAGS)
    except apsw.Error:
        return "error"
    try:
        name = c.db_filename("main")
    finally:
        c.close()
    return os.path.relpath(name, d) if name else ""


def _heliosdb_opens(uri: str, d: str):
    try:
        c = heliosdb.connect(uri, uri=True, key=KEY)
    except errors.Error:
        return "refused"
    try:
        name = c._apsw.db_filename("main")
        info = c.storage_info()
        c.execute("create table if not exists t(x)")
        c.commit()
    finally:
        c.close()
    assert name, f"{uri}: HeliosDB opened a memory or temp database with a key"
    assert info["encryption_enabled"], uri
    with open(name, "rb") as f:
        assert f.read(16) == fmt.MAGIC, f"{uri}: {name} is not encrypted"
    return os.path.relpath(name, d)


@pytest.mark.parametrize("uri", URIS)
def test_parser_names_the_file_sqlite_opens(tmp_path, monkeypatch, uri):
    d = tmp_path / "sqlite"
    (d / "a").mkdir(parents=True)
    monkeypatch.chdir(d)
    uri = uri.replace("{d}", str(d).lstrip("/"))
    want = _sqlite_opens(uri, str(d))
    try:
        target = parse_filename(uri, FLAGS)
    except UriError:
        assert want == "error", uri
        return
    if want == "error":
        # SQLite failed for a reason outside the URI grammar (vfs= unknown to it, or a
        # read-only open of a missing file): the parser must at least see the cause.
        assert (target.vfs is not None or target.readonly or not target.create
                or target.parameter("immutable") == "1"), uri
        return
    got = "" if target.path is None else os.path.relpath(os.path.abspath(target.path), str(d))
    assert got == want, uri


@pytest.mark.parametrize("uri", URIS)
def test_heliosdb_with_a_key_opens_that_file_encrypted_or_refuses(tmp_path, monkeypatch, uri):
    d_sql, d_hel = tmp_path / "sqlite", tmp_path / "helios"
    (d_sql / "a").mkdir(parents=True)
    (d_hel / "a").mkdir(parents=True)
    monkeypatch.chdir(d_sql)
    want = _sqlite_opens(uri.replace("{d}", str(d_sql).lstrip("/")), str(d_sql))
    monkeypatch.chdir(d_hel)
    got = _heliosdb_opens(uri.replace("{d}", str(d_hel).lstrip("/")), str(d_hel))
    if got != "refused":
        assert got == want, uri
    for root, _dirs, names in os.walk(d_hel):  # nothing left behind is plaintext SQLite
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert not f.read(16).startswith(b"SQLite format 3"), (uri, name)


def test_issue_23_repro_is_refused_or_encrypted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("file:a.db?mode=memory&mode=rwc", "file:a.db?mode=rwc&mode=memory"):
        with pytest.raises(errors.EncryptionError, match="repeats mode"):
            heliosdb.connect(uri, uri=True, key=KEY, config="hipaa")
    assert not (tmp_path / "a.db").exists()


@pytest.mark.parametrize("uri,match", [
    ("file:a.db?mode=memory", "in-memory"),
    ("file::memory:", "in-memory"),
    ("file:a.db?vfs=unix", "vfs"),
    ("file:a.db?foo=1", "unknown parameter"),
    ("file:a.db?nolock=maybe", "boolean"),
    ("file:a.db?immutable=1", "immutable"),
    ("file:a.db?cache=shared&cache=private", "repeats cache"),
    # dbapi rewrites shared-cache memory URIs onto the memdb VFS before the open.
    ("file:a.db?mode=memory&cache=shared", "vfs"),
    ("file:a.db?mode=rwc&mode=memory&cache=shared", "vfs"),
])
def test_refusals_are_heliosdb_errors_naming_the_reason(tmp_path, monkeypatch, uri, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.EncryptionError, match=match):
        heliosdb.connect(uri, uri=True, key=KEY)
    assert not (tmp_path / "a.db").exists()


def test_immutable_on_an_encrypted_file_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = heliosdb.connect("a.db", key=KEY)
    c.execute("create table t(x)")
    c.execute("insert into t values (7)")
    c.commit()
    c.close()
    c = heliosdb.connect("file:a.db?immutable=1", uri=True, key=KEY)
    assert c.execute("select x from t").fetchall() == [(7,)]
    c.close()


def test_mode_ro_with_a_key_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.DatabaseError, match="unable to open"):
        heliosdb.connect("file:a.db?mode=ro", uri=True, key=KEY)
    assert not (tmp_path / "a.db").exists()


def test_without_a_key_last_mode_wins_like_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = heliosdb.connect("a.db", key=KEY)
    c.close()
    # The file is encrypted: an open that SQLite sends to it needs the key...
    with pytest.raises(errors.KeyRequiredError):
        heliosdb.connect("file:a.db?mode=memory&mode=rw", uri=True)
    # ...and one that SQLite keeps in memory does not touch it.
    c = heliosdb.connect("file:a.db?mode=rw&mode=memory", uri=True)
    c.close()


def test_attach_guard_uses_the_same_parser():
    from heliosdb.crypto.rekey import attach_escape_reason

    assert attach_escape_reason("file:x.db?vfs=heliosdb") is None
    assert "bypass" in attach_escape_reason("file:x.db?v%66s=unix")
    assert "bypass" in attach_escape_reason("file:x.db?vfs=heliosdb&vfs=unix")
    assert attach_escape_reason("file:x.db?vfs=unix&vfs=heliosdb") is None
    assert attach_escape_reason("file:x.db#?vfs=unix") is None
    assert parse_filename("file:x.db?vfs=unix", OPEN_URI | OPEN_READWRITE | OPEN_CREATE).vfs == "unix"
