"""The open path (issue 17, W7; issue 18 item 4): what connect() checks at every open.

Opening was made cheaper (the encryption-header check reads through the new connection's
own file handle, the stored-policy read asks SQLite's schema whether ``__audit_meta``
exists before running any SQL, statement classifications are shared between
connections, connect() passes its keywords without loops). These tests pin down what
must not change with it: nothing about a file is remembered from one open to the next
(a file that becomes audited, by this process or another, is audited at its next open,
WAL mode included); an encrypted file opened without a key is refused with the clear
error before anything reads or writes it; a schema that cannot be read is an error, never
"not audited"; a factory gets the keywords sqlite3 would give it. For the audited open
(its policy merge and config digest kept per config object and stored text, presets
resolved once per name, one schema read for both neighbourhood checks): every session
still writes its LOGIN and LOGOUT, a policy raised between two opens applies at the
next, and an edited preset file is read again. The audited open reads ``__audit_meta``
once (the policy, the recorded tables, the schema's completeness, the config hash, the
policy pointer and the last auto-purge are answered from that read) and keeps per process
only what is a function of its inputs (the parse of a policy text, the metadata of a
config and context): meta rows changed behind heliosdb are seen at the next open.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

import heliosdb

KEY = bytes(range(32))


def _plain_file(path, wal=False):
    with contextlib.closing(heliosdb.connect(str(path))) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()


def _assert_audited(path, **kw):
    """connect(path) with no config runs audited, and its statements reach the log."""
    with contextlib.closing(heliosdb.connect(str(path), **kw)) as conn:
        assert conn.audit is not None and conn.config.audit.enabled
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        ops = [e.operation for e in conn.audit.query().all()]
        assert "LOGIN" in ops and "INSERT" in ops
        assert conn.audit.verify().ok


def _assert_plain(path):
    with contextlib.closing(heliosdb.connect(str(path))) as conn:
        assert conn.audit is None
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] >= 1


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_a_file_audited_between_two_opens_is_audited_at_the_next(tmp_path, wal):
    path = tmp_path / "a.db"
    _plain_file(path, wal)
    _assert_plain(path)
    _assert_plain(path)  # opened twice as plain: nothing of that may be remembered
    with contextlib.closing(heliosdb.connect(str(path), config="default")) as conn:
        conn.execute("INSERT INTO t VALUES (3)")
        conn.commit()
    _assert_audited(path)


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_audited_while_a_plain_connection_stays_open(tmp_path, wal):
    """The file becomes audited while a plain connection holds it open (in WAL mode the
    change then lives in the -wal file, not yet in the main file): a new open sees it."""
    path = tmp_path / "a.db"
    _plain_file(path, wal)
    keeper = heliosdb.connect(str(path))
    try:
        assert keeper.execute("SELECT count(*) FROM t").fetchone() == (1,)
        with contextlib.closing(heliosdb.connect(str(path), config="default")) as conn:
            conn.execute("INSERT INTO t VALUES (3)")
            conn.commit()
        if wal:
            assert os.path.getsize(str(path) + "-wal") > 0
        _assert_audited(path)
    finally:
        keeper.close()


def test_audited_by_another_process_between_two_opens(tmp_path):
    path = tmp_path / "a.db"
    _plain_file(path, wal=True)
    keeper = heliosdb.connect(str(path))  # the file stays open in this process
    try:
        _assert_plain(path)
        code = textwrap.dedent(f"""
            import heliosdb
            conn = heliosdb.connect({str(path)!r}, config="default")
            conn.execute("INSERT INTO t VALUES (4)")
            conn.commit()
            conn.close()
        """)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
        _assert_audited(path)
    finally:
        keeper.close()


def test_an_encrypted_file_opened_without_a_key_is_refused_untouched(tmp_path):
    if not heliosdb.native_available():
        pytest.skip("native extension not available")
    path = tmp_path / "e.db"
    with contextlib.closing(heliosdb.connect(str(path), key=KEY)) as conn:
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES ('secret')")
        conn.commit()
    before = path.read_bytes()
    names = sorted(os.listdir(tmp_path))
    for database, kw in ((str(path), {}), (path, {}), (os.fsencode(str(path)), {}),
                         (f"file:{path}?mode=rw", {"uri": True}),
                         (str(path), {"isolation_level": None})):
        with pytest.raises(heliosdb.KeyRequiredError, match="encrypted HeliosDB database: "
                           "pass the key"):
            heliosdb.connect(database, **kw)
    # nothing was written, no side file was made, and the key still opens it
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == names
    with contextlib.closing(heliosdb.connect(str(path), key=KEY)) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [("secret",)]


def test_an_encrypted_file_refused_while_a_keyed_connection_has_it_open(tmp_path):
    """The refused open closes its own handle of the file: the keyed connection's locks
    (POSIX locks belong to the process and inode) are SQLite's to keep, and it goes on."""
    if not heliosdb.native_available():
        pytest.skip("native extension not available")
    path = tmp_path / "e.db"
    conn = heliosdb.connect(str(path), key=KEY)
    try:
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES (1)")  # a write transaction is open
        with pytest.raises(heliosdb.KeyRequiredError):
            heliosdb.connect(str(path))
        conn.commit()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        conn.close()


def test_a_schema_that_cannot_be_read_is_an_error_not_unaudited(tmp_path):
    """Whether the file holds a policy is asked of its schema: a schema that cannot be
    loaded (another connection holds the file locked) fails the open, as the query did."""
    path = tmp_path / "a.db"
    _plain_file(path)
    with contextlib.closing(heliosdb.connect(str(path), config="default")) as conn:
        conn.commit()
    # Another process holds the lock (POSIX locks do not conflict inside one process).
    code = textwrap.dedent(f"""
        import sqlite3, sys
        holder = sqlite3.connect({str(path)!r}, isolation_level=None)
        # (the audited connection may have left the file in WAL mode, where readers
        # never wait)
        holder.execute("PRAGMA journal_mode=DELETE").fetchone()
        holder.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        sys.stdin.readline()
        holder.execute("ROLLBACK")
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(heliosdb.OperationalError, match="locked"):
            heliosdb.connect(str(path), timeout=0)
    finally:
        holder.communicate("\n", timeout=60)
    _assert_audited(path)


def test_not_a_database_fails_at_connect(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database at all" * 200)
    with pytest.raises(heliosdb.DatabaseError, match="not a database"):
        heliosdb.connect(str(path))


def test_an_empty_or_new_file_opens_plain(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for p in (empty, tmp_path / "new.db", tmp_path / "short.db"):
        if p.name == "short.db":
            p.write_bytes(b"Helios")  # shorter than any header: not encrypted
            with pytest.raises(heliosdb.DatabaseError):
                heliosdb.connect(str(p)).execute("SELECT 1 FROM sqlite_master").fetchall()
            continue
        with contextlib.closing(heliosdb.connect(str(p))) as conn:
            assert conn.audit is None
            conn.execute("CREATE TABLE t(x)")
            conn.commit()


def test_statement_classification_is_shared_but_connections_are_not(tmp_path):
    """Connections share what a SQL text is (statements.classify), nothing else: the same
    texts on a connection with its own cache size behave the same."""
    path = str(tmp_path / "a.db")
    _plain_file(tmp_path / "a.db")
    for size in (128, 0, 5, 128):
        with contextlib.closing(heliosdb.connect(path, cached_statements=size)) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
            cur = conn.execute("INSERT INTO t VALUES (?)", (9,))
            assert cur.rowcount == 1 and conn.in_transaction
            conn.rollback()
            with pytest.raises(heliosdb.ProgrammingError):
                conn.execute("SELECT 1; SELECT 2")


# (Keywords given with their default values are not in the list: sqlite3 passes them on
# as given, heliosdb drops them, as it always did.)
_FACTORY_CALLS = [
    {},
    {"timeout": 5},          # an int: differs in type, passed on
    {"timeout": 2.5},
    {"detect_types": 3},
    {"detect_types": False},
    {"isolation_level": None},
    {"isolation_level": "IMMEDIATE"},
    {"check_same_thread": False},
    {"check_same_thread": 1},
    {"cached_statements": 7},
    {"uri": True},
    {"uri": 0},
]


@pytest.mark.parametrize("kwargs", _FACTORY_CALLS, ids=lambda kw: repr(kw))
def test_a_factory_gets_the_keywords_sqlite3_gives_it(tmp_path, kwargs):
    def received(mod):
        seen = {}

        class Recorder(mod.Connection):
            def __init__(self, *args, **kw):
                seen["args"], seen["kw"] = args, dict(kw)
                super().__init__(*args, **kw)

        path = str(tmp_path / f"{mod.__name__}.db")
        if kwargs.get("uri"):
            path = "file:" + path
        mod.connect(path, factory=Recorder, **kwargs).close()
        return len(seen["args"]), {k: (type(v), v) for k, v in seen["kw"].items()
                                   if k != "factory"}

    assert received(heliosdb) == received(sqlite3)


# --- the audited open (issue 18 item 4) -------------------------------------------------


def _events(path):
    with contextlib.closing(heliosdb.connect(str(path))) as conn:
        return [(e.operation, e.session_id) for e in conn.audit.query().all()]


def test_every_audited_open_writes_its_login_and_logout(tmp_path):
    path = tmp_path / "a.db"
    _plain_file(path)
    sessions = []
    for kw in ({"config": "default"}, {"config": "default"}, {}, {"config": "verbose"},
               {"config": "default"}):
        with contextlib.closing(heliosdb.connect(str(path), **kw)) as conn:
            sessions.append(conn.audit.session_id)
    events = _events(path)
    for sid in sessions:
        ops = [op for op, s in events if s == sid]
        # (a session that raised the stored policy records that first)
        assert ops.count("LOGIN") == 1 and ops[-1] == "LOGOUT", ops
        assert set(ops[:ops.index("LOGIN")]) <= {"AUDIT_CONFIG_CHANGE"}, ops


def test_the_policy_read_at_each_open_follows_the_file(tmp_path):
    """enforce() keeps its answers per (config, stored policy text): a policy raised by
    another connection between two opens applies at the next open, and the overrides
    reported in LOGIN are the connection's own copy."""
    path = tmp_path / "a.db"
    _plain_file(path)
    with contextlib.closing(heliosdb.connect(str(path), config="default")) as conn:
        conn.commit()
    first = heliosdb.connect(str(path), config="minimal")
    second = heliosdb.connect(str(path), config="minimal")
    try:
        assert first.config.audit.log_dml and second.config.audit.log_dml
        assert first.config.audit == second.config.audit
    finally:
        first.close()
        second.close()
    with contextlib.closing(heliosdb.connect(str(path), config="verbose")) as conn:
        conn.commit()  # the stored policy now logs SELECTs
    with contextlib.closing(heliosdb.connect(str(path), config="minimal")) as conn:
        assert conn.config.audit.log_select  # raised to the new stored policy
    with contextlib.closing(heliosdb.connect(str(path))) as conn:
        assert conn.config.audit.log_select and conn.config.audit.log_dml


def test_a_preset_file_edited_between_two_opens_is_read_again(tmp_path, monkeypatch):
    import shutil

    from heliosdb import config as config_mod

    presets = tmp_path / "presets"
    shutil.copytree(config_mod.presets_dir(), presets)
    a = config_mod.load_config("default")  # from the shipped presets
    monkeypatch.setattr(config_mod, "presets_dir", lambda: presets)
    assert config_mod.load_config("default") is not a  # another directory: another file
    a = config_mod.load_config("default")
    assert config_mod.load_config("default") is a  # kept while the file reads the same
    assert a.audit.retention_days == 90
    text = (presets / "default.toml").read_text()
    (presets / "default.toml").write_text(text.replace("retention_days = 90",
                                                       "retention_days = 91"))
    b = config_mod.load_config("default")
    assert b.audit.retention_days == 91
    (presets / "default.toml").unlink()
    with pytest.raises(heliosdb.ConfigError):
        config_mod.load_config("default")


# --- what an audited open runs (issue 18 item 4) ------------------------------------------


def _tracing():
    """A list that receives the SQL of every statement SQLite runs on the connections
    opened while it is installed (remove it with ``_untrace``), for their lifetime."""
    import apsw

    seen = []

    def hook(db):
        db.trace_v2(apsw.SQLITE_TRACE_STMT,
                    lambda ev: seen.append(" ".join((ev.get("sql") or "").split())))

    apsw.connection_hooks.append(hook)
    return seen, hook


def _untrace(hook):
    import apsw

    apsw.connection_hooks.remove(hook)


def test_an_audited_open_reads_the_meta_table_once(tmp_path):
    """The open answers the policy, the recorded tables, the schema's completeness, the
    config hash, the policy pointer and the last auto-purge from one read of
    ``__audit_meta``; the log's presence from the schema read the neighbourhood check
    makes. The LOGIN write keeps its head read inside BEGIN IMMEDIATE, and a whole cycle
    (open, first read, close) runs 14 statements (21 before)."""
    path = str(tmp_path / "a.db")
    with contextlib.closing(heliosdb.connect(path, config="default")) as conn:
        conn.execute("CREATE TABLE t(x)")
        conn.commit()
    heliosdb.connect(path, config="default").close()  # as every later open finds the file
    seen, hook = _tracing()
    try:
        conn = heliosdb.connect(path, config="default")
    finally:
        _untrace(hook)
    opened = list(seen)
    conn.execute("SELECT count(*) FROM t").fetchall()
    at_close = len(seen)
    conn.close()
    read, closed = seen[len(opened):at_close], seen[at_close:]
    meta_reads = [s for s in opened if "__audit_meta" in s and not s.startswith("INSERT")]
    assert meta_reads == ["SELECT tbl, key, value FROM __audit_meta"], opened
    assert not [s for s in opened if "table_xinfo" in s or "sqlite_schema" in s], opened
    for writes in (opened, closed):
        begin = writes.index("BEGIN IMMEDIATE")
        head = next(i for i, s in enumerate(writes) if s.startswith("SELECT id, checksum"))
        assert begin < head < writes.index("COMMIT"), writes
    assert len(opened) + len(read) + len(closed) <= 14, (opened, read, closed)


def test_meta_rows_changed_behind_heliosdb_are_read_at_the_next_open(tmp_path):
    """Nothing of ``__audit_meta`` is kept from one open to the next: a config hash, a
    default meta row, a recorded audit table changed by another tool between two opens
    are seen (a config change recorded, the row restored, the table protected)."""
    path = str(tmp_path / "a.db")
    with contextlib.closing(heliosdb.connect(path, config="default")) as conn:
        conn.execute("CREATE TABLE t(x)")
        conn.commit()
    heliosdb.connect(path, config="default").close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE __audit_meta SET value = 'x' WHERE tbl = '__audit_log' "
                "AND key = 'config_hash'")
    raw.execute("DELETE FROM __audit_meta WHERE tbl = '__audit_log' AND key = 'checkpoint_seq'")
    raw.execute("INSERT INTO __audit_meta VALUES ('other_log', 'format_version', 1)")
    raw.commit()
    raw.close()
    with contextlib.closing(heliosdb.connect(path, config="default")) as conn:
        assert conn.audit.protects("other_log")
        ops = [e.operation for e in conn.audit.query().all()]
        assert ops[-2:] == ["AUDIT_CONFIG_CHANGE", "LOGIN"], ops
        assert conn.audit.verify().ok
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT value FROM __audit_meta WHERE tbl = '__audit_log' AND "
                           "key = 'checkpoint_seq'").fetchall() == [(0,)]
    finally:
        raw.close()


def test_the_stored_policy_is_parsed_once_per_text_and_read_only(tmp_path):
    """read_stored_policy() keeps the parse of each recorded config text: what it returns
    for a text is shared by every read of it, hence read-only; another text (a policy
    changed behind heliosdb) is parsed again. Session ids stay uuid4 hex."""
    import uuid

    import apsw

    from heliosdb.audit.policy import read_stored_policy

    path = str(tmp_path / "a.db")
    with contextlib.closing(heliosdb.connect(path, config="default")) as conn:
        assert uuid.UUID(hex=conn.audit.session_id).version == 4
        assert uuid.UUID(hex=conn.audit.session_id).hex == conn.audit.session_id
    db = apsw.Connection(path)
    try:
        first, second = read_stored_policy(db), read_stored_policy(db)
        assert first.audit is second.audit and first.audit["log_dml"] is True
        with pytest.raises(TypeError):
            first.audit["log_dml"] = False
        with pytest.raises(TypeError):
            first.config["audit"] = {}
        text = first.text.replace('"log_select":false', '"log_select":true')
        assert text != first.text
        db.execute("UPDATE __audit_meta SET value = ? WHERE tbl = '__audit_log' AND "
                   "key = 'config'", (text,))
        third = read_stored_policy(db)
        assert third.audit["log_select"] is True and first.audit["log_select"] is False
    finally:
        db.close()
    with contextlib.closing(heliosdb.connect(path)) as conn:
        assert conn.config.audit.log_select  # the changed policy, enforced at this open


def test_each_connection_records_its_own_metadata(tmp_path):
    """The constant part of the metadata is kept per config, database and context: two
    connections with contexts whose values are equal in Python (1 and True, 0 and
    False) but not in JSON record each its own; a file of another name, its own name;
    a context that cannot key the cache (a float, a list) is encoded as before."""
    import json

    def login_metadata(path, context):
        with contextlib.closing(heliosdb.connect(str(path), config="default",
                                                 audit_context=context)) as conn:
            sid = conn.audit.session_id
            conn.commit()
        with contextlib.closing(heliosdb.connect(str(path), config="default")) as conn:
            ev = [e for e in conn.audit.query().all()
                  if e.session_id == sid and e.operation == "LOGIN"]
        return json.loads(ev[0].metadata)

    a, b = tmp_path / "a.db", tmp_path / "b.db"
    assert login_metadata(a, {"application_name": 1})["application_name"] == 1
    assert login_metadata(a, {"application_name": True})["application_name"] is True
    assert login_metadata(a, {"application_name": 0})["application_name"] == 0
    assert login_metadata(a, {"application_name": False})["application_name"] is False
    assert login_metadata(a, {"application_name": -0.0})["application_name"] == 0.0
    assert login_metadata(a, {"application_name": [1]})["application_name"] == [1]
    assert login_metadata(b, {"application_name": 1})["database_name"] == "b.db"
    assert login_metadata(a, {"application_name": 1})["database_name"] == "a.db"
