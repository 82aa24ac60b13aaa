"""The audit chain: canonical encoding, C/pure equality, the store (ids, time, head).

Every test that touches the chain runs twice, with the C writer and with the pure-Python
fallback (fixture ``chain_impl``, tests/conftest.py).
``python tests/test_audit_chain.py --write-vectors`` regenerates
tests/vectors/audit_chain.json (only when the format version changes).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb.audit import chain, store
from heliosdb.audit.events import (GENESIS, OPERATIONS, PRODUCT_OPERATIONS, EventFields,
                                   canonical_json, check_operation, decode_event, encode_event,
                                   format_ts)
from heliosdb.errors import DataError, OperationalError, ProgrammingError

from helpers.audit_log import TABLE, make_log, open_db, sample_events
from helpers.chain_impl import select
from helpers.processes import run_python
from helpers.threads import run_threads

VECTORS = pathlib.Path(__file__).parent / "vectors" / "audit_chain.json"

# --- vectors ------------------------------------------------------------------------------

_VECTOR_EVENTS = [
    # (id, ts_us, affected_rows, success, ten texts)
    (1, 1_700_000_000_000_000, 1, 1,
     ["s-1", "alice", "INSERT", "main.accounts", "INSERT INTO accounts VALUES (?, ?)", None,
      '{"application_name":"billing","client_ip":"10.0.0.7"}', None, '{"balance":100,"id":7}',
      None]),
    (2, 1_700_000_000_000_001, None, 1, [None] * 2 + ["BEGIN"] + [None] * 7),
    (3, 1_700_000_000_000_002, 0, 0,
     ["s-1", "bob", "DELETE", "main.t", "DELETE FROM t", "attempt to write a readonly database",
      "", "", "", "audit: ticket #42"]),  # empty strings are not NULL
    (4, 0, -1, 1, ["", "zoë 🚀 日本", "KEY_ROTATION", None, None, None, None, None, None,
                   "quarterly rotation"]),
    (5, -(1 << 63), (1 << 63) - 1, 1, ["nul\x00inside", None, "SELECT", "t", "x" * 1000, None,
                                       None, None, None, None]),
]


def _vector_chain() -> list[dict]:
    prev = GENESIS
    out = []
    for id_, ts, rows, ok, texts in _VECTOR_EVENTS:
        enc = encode_event(id_, ts, rows, ok, texts)
        ck = hashlib.sha256(prev + enc).digest()
        out.append({"id": id_, "ts_us": ts, "affected_rows": rows, "success": ok,
                    "texts": texts, "prev_hash": prev.hex(), "encoding": enc.hex(),
                    "checksum": ck.hex()})
        prev = ck
    return out


def write_vectors() -> None:
    doc = {
        "format_version": 1,
        "provenance": (
            "Produced by `python tests/test_audit_chain.py --write-vectors` with the pure-"
            "Python encoder (heliosdb.audit.events.encode_event) and hashlib.sha256, from the "
            "events listed in _VECTOR_EVENTS of that file. Vector 0's encoding is rebuilt "
            "independently from the spec (struct) in test_vector_independent, and every "
            "checksum is re-checked with hashlib; both implementations (C, pure) must "
            "reproduce every checksum. Spec: docs/AUDIT_FORMAT.md."),
        "text_fields": ["session_id", "user", "operation", "target", "query", "error",
                        "metadata", "old_values", "new_values", "reason"],
        "genesis": GENESIS.hex(),
        "vectors": _vector_chain(),
    }
    VECTORS.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _load_vectors() -> dict:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def test_vectors_file_matches_the_spec():
    """The checked-in file still describes what the encoder does (no silent format drift)."""
    doc = _load_vectors()
    assert doc["format_version"] == 1
    assert doc["vectors"] == _vector_chain()


def test_vector_independent():
    """Vector 0 rebuilt by hand from the written spec, hashed with hashlib."""
    v = _load_vectors()["vectors"][0]
    enc = bytearray(b"\x01")
    for x in (v["id"], v["ts_us"], v["affected_rows"], v["success"]):
        enc += b"\x00" if x is None else b"\x01" + struct.pack(">q", x)
    for t in v["texts"]:
        if t is None:
            enc += b"\x00"
        else:
            b = t.encode()
            enc += b"\x02" + struct.pack(">I", len(b)) + b
    assert enc.hex() == v["encoding"]
    ck = hashlib.sha256(bytes(32) + bytes(enc)).hexdigest()
    assert ck == v["checksum"]
    # The worked example of docs/AUDIT_FORMAT.md is this vector.
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "AUDIT_FORMAT.md").read_text()
    assert v["checksum"] in doc and v["encoding"][:64] in doc


def test_vectors_every_checksum_with_hashlib():
    for v in _load_vectors()["vectors"]:
        got = hashlib.sha256(bytes.fromhex(v["prev_hash"]) + bytes.fromhex(v["encoding"]))
        assert got.hexdigest() == v["checksum"]


def test_vectors_both_impls_agree(chain_impl):
    doc = _load_vectors()["vectors"]
    ids = [v["id"] for v in doc]
    ts = [v["ts_us"] for v in doc]
    rows = [v["affected_rows"] for v in doc]
    ok = [v["success"] for v in doc]
    texts = [t for v in doc for t in v["texts"]]
    cks = chain.chain_checksums(GENESIS, ids, ts, rows, ok, texts)
    assert [c.hex() for c in cks] == [v["checksum"] for v in doc]
    # One event per call (the C writer's scalar path), chained by hand.
    prev = GENESIS
    for k, v in enumerate(doc):
        (ck,) = chain.chain_checksums(prev, [ids[k]], [ts[k]], [rows[k]], [ok[k]],
                                      texts[10 * k:10 * k + 10])
        assert ck.hex() == v["checksum"]
        prev = ck
    # Without the NUL-bearing vector the C path does the whole batch itself.
    cks4 = chain.chain_checksums(GENESIS, ids[:4], ts[:4], rows[:4], ok[:4], texts[:40])
    assert [c.hex() for c in cks4] == [v["checksum"] for v in doc[:4]]


def test_c_encoder_matches_pure_encoding():
    """The C encoder's bytes (not only its hashes) equal the reference encoding."""
    from heliosdb import native
    if not native.available():
        pytest.skip(f"native module not available: {native.unavailable_reason()}")
    ffi, lib = native.ffi, native.lib
    for v in _load_vectors()["vectors"][:4]:
        mask = sum(1 << k for k, t in enumerate(v["texts"]) if t is None)
        if v["affected_rows"] is None:
            mask |= 1 << 10
        blob = "\x00".join(t or "" for t in v["texts"]).encode()
        out = ffi.new("unsigned char[]", 4096)
        n = lib.heliosdb_chain_encode(v["id"], v["ts_us"], v["affected_rows"] or 0,
                                      v["success"], mask, blob, len(blob), out, 4096)
        assert bytes(ffi.buffer(out, n)).hex() == v["encoding"]
    assert lib.heliosdb_chain_format_version() == 1


def _doc_script() -> str:
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "AUDIT_FORMAT.md").read_text()
    block = doc.split("<!-- verify-script-begin -->")[1].split("<!-- verify-script-end -->")[0]
    return block.split("```python")[1].split("```")[0]


def test_doc_script_verifies_a_log_without_heliosdb(tmp_path, chain_impl):
    """The stdlib-only script of docs/AUDIT_FORMAT.md agrees with the writer."""
    script = _doc_script()
    assert len(script.strip().splitlines()) <= 50
    ns: dict = {}
    exec(compile(script, "AUDIT_FORMAT.md", "exec"), ns)
    path = str(tmp_path / "a.db")
    conn = make_log(path, 25)
    store.append(conn, TABLE, [EventFields("SELECT", query="nul\x00inside")])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out = ns["verify"](path)
    assert out == f"ok: 26 events, head checksum {store.head(conn, TABLE).last_checksum.hex()}"
    conn.execute(f"UPDATE {TABLE} SET query = 'x' WHERE id = 7")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert ns["verify"](path) == "event 7: modified"


# --- encoding properties ------------------------------------------------------------------

_text = st.one_of(st.none(), st.text(max_size=40))
_i64 = st.integers(-(1 << 63), (1 << 63) - 1)
_event = st.tuples(_i64, _i64, st.one_of(st.none(), _i64), _i64,
                   st.lists(_text, min_size=10, max_size=10))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_event, b=_event)
def test_encoding_is_injective(a, b):
    ea, eb = encode_event(a[0], a[1], a[2], a[3], a[4]), encode_event(b[0], b[1], b[2], b[3], b[4])
    assert (ea == eb) == (a == b)
    ints, texts = decode_event(ea)
    assert ints == [a[0], a[1], a[2], a[3]] and texts == a[4]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, min_size=1, max_size=8))
def test_c_and_pure_chains_agree(events):
    """Random batches (NULLs, U+0000, astral characters, int64 extremes): same checksums."""
    args = ([e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
            [e[3] for e in events], [t for e in events for t in e[4]])
    results = []
    for name in chain.available_impls():
        with pytest.MonkeyPatch.context() as mp:
            select(mp, name)
            results.append(chain.chain_checksums(GENESIS, *args))
    assert all(r == results[-1] for r in results)
    prev = GENESIS
    for e, ck in zip(events, results[-1]):
        prev = hashlib.sha256(prev + encode_event(*e)).digest()
        assert ck == prev


def test_type_errors_are_the_same_in_both(chain_impl):
    for bad in ([1] + [None] * 9, [b"x"] + [None] * 9):
        with pytest.raises(TypeError):
            chain.chain_checksums(GENESIS, [1], [1], [None], [1], bad)
    with pytest.raises(TypeError):
        chain.chain_checksums(GENESIS, [1], [1], [True], [1], [None] * 10)
    with pytest.raises(OverflowError):
        chain.chain_checksums(GENESIS, [1 << 63], [1], [None], [1], [None] * 10)
    with pytest.raises(UnicodeEncodeError):
        chain.chain_checksums(GENESIS, [1], [1], [None], [1], ["\ud800"] + [None] * 9)
    with pytest.raises(ValueError):
        chain.chain_checksums(b"short", [1], [1], [None], [1], [None] * 10)


def test_decode_rejects_malformed():
    enc = encode_event(1, 2, None, 1, ["a"] * 10)
    for bad in (b"", b"\x02" + enc[1:], enc[:-1], enc + b"\x00", enc[:1] + b"\x02" + enc[2:]):
        with pytest.raises(ValueError):
            decode_event(bad)


def test_operations_and_names():
    for op in ("CREATE_TABLE", "DROP_TRIGGER", "SELECT", "ROLLBACK", "LOGIN", "REVOKE",
               "DETACH", "KEY_CHANGE", "KEY_ROTATION", "AUDIT_CONFIG_CHANGE",
               "RETENTION_PURGE", "EXPORT", "VERIFY"):
        assert op in OPERATIONS
    assert set(PRODUCT_OPERATIONS) <= OPERATIONS
    assert check_operation("DATA_SUBJECT_REQUEST") == "DATA_SUBJECT_REQUEST"
    for bad in ("insert", "", "DROP TABLE", "X" * 65, None, 3):
        with pytest.raises(ProgrammingError):
            check_operation(bad)


def test_canonical_json():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    assert canonical_json({"v": b"\x00\xff"}) == '{"v":{"$base64":"AP8="}}'
    # A REAL column can hold inf (captured row values): JSON has no such number, so it is
    # written as a one-key object, like bytes.
    assert canonical_json({"x": float("inf"), "y": [float("-inf")]}) == \
        '{"x":{"$float":"inf"},"y":[{"$float":"-inf"}]}'
    assert canonical_json({"x": float("nan")}) == '{"x":{"$float":"nan"}}'
    with pytest.raises(ProgrammingError):
        canonical_json({"x": object()})


def test_format_ts():
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"
    assert format_ts(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456Z"


_PRINT_IMPL = ("import heliosdb.native as n, heliosdb.audit.chain as c; "
               "print(c.__impl__, n.available())")

# A child in which heliosdb._native cannot load, as after a failed or stale build.
_BROKEN_NATIVE = """
import sys
class BrokenBuild:
    def find_spec(self, name, path=None, target=None):
        if name == "heliosdb._native":
            raise ImportError("undefined symbol: heliosdb_chain_one (simulated)")
sys.meta_path.insert(0, BrokenBuild())
try:
    import heliosdb.audit.chain as c
except ImportError as exc:
    print("ImportError:", exc)
else:
    print("imported", c.__impl__)
"""


def _impl_in_child(**env: str | None) -> str:
    env = {"HELIOSDB_IMPL": None, "HELIOSDB_PURE": None, **env}
    r = run_python(_PRINT_IMPL, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_impl_is_chosen_by_the_environment_at_import():
    """HELIOSDB_IMPL=pure keeps the extension (the VFS needs it); HELIOSDB_PURE=1 is its
    alias that hides the extension too; unset picks C when the extension loads."""
    assert _impl_in_child(HELIOSDB_PURE="1") == "pure False"
    if not _native_builds():
        pytest.skip("native module not built: only the pure chain exists here")
    assert _impl_in_child() == "c True"
    assert _impl_in_child(HELIOSDB_IMPL="c") == "c True"
    assert _impl_in_child(HELIOSDB_IMPL="pure") == "pure True"
    assert _impl_in_child(HELIOSDB_IMPL=" Pure ") == "pure True"


def test_asking_for_c_without_the_extension_is_an_import_error_naming_why():
    r = run_python(_BROKEN_NATIVE, env={"HELIOSDB_IMPL": "c", "HELIOSDB_PURE": None})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ImportError: HELIOSDB_IMPL=c"), r.stdout
    assert "undefined symbol: heliosdb_chain_one (simulated)" in r.stdout
    r = run_python(_BROKEN_NATIVE, env={"HELIOSDB_IMPL": None, "HELIOSDB_PURE": None})
    assert r.stdout.strip() == "imported pure", (r.stdout, r.stderr)


@pytest.mark.parametrize("env, says", [
    ({"HELIOSDB_IMPL": "rust"}, "HELIOSDB_IMPL='rust' is not an implementation"),
    ({"HELIOSDB_IMPL": "c", "HELIOSDB_PURE": "1"}, "contradict"),
])
def test_a_choice_heliosdb_cannot_honour_is_an_import_error(env, says):
    r = run_python("import heliosdb", env=env)
    assert r.returncode != 0
    assert "ImportError: " in r.stderr and says in r.stderr, r.stderr


def test_check_result_layout_is_the_headers():
    """The offsets of heliosdb_chain_check's result come from csrc/chain_api.h: the
    decoder agrees with the built extension, and refuses one that disagrees."""
    if not _native_builds():
        pytest.skip("native module not built")
    from heliosdb import native
    chain._check_layout_agrees(native.lib)
    assert native.lib.HELIOSDB_CHECK_SIZE == chain._CHECK.size
    shifted = {f"HELIOSDB_CHECK_{k}": v for k, v in chain._CHECK_OFFSETS.items()}
    shifted["HELIOSDB_CHECK_LINK"] += 1
    with pytest.raises(ImportError, match="HELIOSDB_CHECK_LINK is 34"):
        chain._check_layout_agrees(type("Lib", (), shifted))


def _native_builds() -> bool:
    try:
        import heliosdb._native  # noqa: F401
        return True
    except ImportError:
        return False


# --- the store ----------------------------------------------------------------------------

def test_schema_columns_indexes_and_meta(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 0)
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")]
    assert cols == ["id", "ts_us", "session_id", "user", "operation", "target", "query",
                    "affected_rows", "success", "error", "metadata", "old_values",
                    "new_values", "reason", "prev_hash", "checksum"]
    idx = {r[1] for r in conn.execute(f"PRAGMA index_list({TABLE})")}
    assert {f"{TABLE}_by_user", f"{TABLE}_by_target", f"{TABLE}_rare_operation"} == idx
    assert store.head(conn, TABLE) == store.Head(0, GENESIS, None, 0)
    db_id = store.get_meta(conn, TABLE, "database_id")
    store.ensure_schema(conn, TABLE)  # idempotent, keeps the id
    assert store.get_meta(conn, TABLE, "database_id") == db_id and len(db_id) == 32


def test_append_assigns_ids_time_and_links(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 0)
    ids = store.append(conn, TABLE, sample_events(20), now_us=1000)
    assert ids == list(range(1, 21))
    ids2 = store.append(conn, TABLE, sample_events(3), now_us=500)  # clock went back
    assert ids2 == [21, 22, 23]
    events = list(store.read_events(conn, TABLE))
    ts = [e.ts_us for e in events]
    assert ts == list(range(1000, 1023))  # max(now, last + 1), never backwards
    prev = GENESIS
    for e in events:
        assert e.prev_hash == prev
        assert e.checksum == hashlib.sha256(prev + e.encoding()).digest()
        prev = e.checksum
    h = store.head(conn, TABLE)
    assert h == store.Head(23, prev, 1022, 23)
    ids3 = store.append(conn, TABLE, sample_events(1))  # real clock, far ahead
    assert ids3 == [24] and store.head(conn, TABLE).last_ts_us > 1_600_000_000_000_000


def test_append_normalises_fields(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 0)
    store.append(conn, TABLE, [EventFields("INSERT", query="x" * 50, success=False,
                                           metadata={"b": 2, "a": 1}, new_values=[1, b"\x01"])],
                 max_query_length=10)
    store.append(conn, TABLE, [("UPDATE", "t", "u", "s", "y" * 50, 3, True, None, '{"k":1}',
                                None, None, "why")], max_query_length=None)
    e1, e2 = store.read_events(conn, TABLE)
    assert e1.query == "x" * 10 and e1.success == 0
    assert e1.metadata == '{"a":1,"b":2}' and e1.new_values == '[1,{"$base64":"AQ=="}]'
    assert e2.query == "y" * 50 and e2.affected_rows == 3 and e2.reason == "why"
    assert e2.success == 1 and e2.metadata == '{"k":1}'


def test_append_rejects_bad_values_and_writes_nothing(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 2)
    bad = [EventFields("insert"), EventFields("INSERT", target=5),
           EventFields("INSERT", affected_rows=1 << 64), EventFields("INSERT", user="\ud800"),
           EventFields("INSERT", affected_rows="3"), ("INSERT",)]
    errors = [ProgrammingError, ProgrammingError, DataError, DataError, ProgrammingError,
              ProgrammingError]
    for ev, err in zip(bad, errors):
        with pytest.raises(err):
            store.append(conn, TABLE, sample_events(1) + [ev])
        assert store.head(conn, TABLE).last_id == 2
        assert not conn.in_transaction


def test_text_with_nul_round_trips(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 1)
    store.append(conn, TABLE, [EventFields("INSERT", query="a\x00b", target="t\x00")])
    e = list(store.read_events(conn, TABLE))[-1]
    assert e.query == "a\x00b" and e.target == "t\x00"
    from heliosdb.audit.verify import verify_connection
    assert verify_connection(conn, TABLE).ok


def test_caller_owns_transaction_and_rollback_leaves_no_trace(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 3)
    h = store.head(conn, TABLE)
    conn.execute("BEGIN IMMEDIATE")
    store.append(conn, TABLE, sample_events(5))
    assert conn.in_transaction  # append did not commit the caller's transaction
    conn.execute("ROLLBACK")
    assert store.head(conn, TABLE) == h
    ids = store.append(conn, TABLE, sample_events(2))  # head re-read: no gap, no fork
    assert ids == [4, 5]


def test_errors_are_heliosdb_errors(tmp_path, chain_impl):
    conn = open_db(str(tmp_path / "a.db"))
    with pytest.raises(OperationalError):  # no schema: apsw.SQLError translated
        store.append(conn, TABLE, sample_events(1))
    for bad in ("x; DROP TABLE t", "__audit_meta", "sqlite_x", ""):
        with pytest.raises(ProgrammingError):
            store.ensure_schema(conn, bad)


def test_custom_table_name_and_two_logs(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "a.db"), 2)
    store.ensure_schema(conn, "app_audit")
    store.append(conn, "app_audit", sample_events(4))
    assert store.head(conn, "app_audit").count == 4
    assert store.head(conn, TABLE).count == 2


def test_threads_on_separate_connections_make_one_chain(tmp_path, chain_impl):
    path = str(tmp_path / "a.db")
    make_log(path, 0).close()

    def worker(k: int) -> None:
        c = open_db(path)
        for i in range(20):
            store.append(c, TABLE, sample_events(3, start=k * 100 + i))
        c.close()

    assert run_threads(worker, [(k,) for k in range(4)]) == []
    from heliosdb.audit.verify import verify_connection
    r = verify_connection(open_db(path), TABLE)
    assert r.ok, r.message
    assert r.events_checked == 4 * 20 * 3


def test_processes_append_to_one_linear_chain(tmp_path):
    path = str(tmp_path / "a.db")
    make_log(path, 0).close()
    code = (
        "import sys\n"
        "from heliosdb.audit import store\n"
        "from helpers.audit_log import sample_events, open_db\n"
        "c = open_db(sys.argv[1])\n"
        "for i in range(40):\n"
        "    c.execute('BEGIN IMMEDIATE')\n"
        "    store.append(c, '__audit_log', sample_events(5, start=i))\n"
        "    c.execute('COMMIT')\n")
    import subprocess
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", code, path],
                              env=env, stderr=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    from heliosdb.audit.verify import verify_connection
    r = verify_connection(open_db(path), TABLE)
    assert r.ok, r.message
    assert r.events_checked == 3 * 40 * 5


if __name__ == "__main__":
    if "--write-vectors" in sys.argv:
        write_vectors()
        print(f"wrote {VECTORS}")
