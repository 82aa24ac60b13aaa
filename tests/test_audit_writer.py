"""The log writer in C (csrc/chain.c heliosdb_log_append, heliosdb.audit.chain.insert_events):
store.append's fast path for a batch of events. It must store exactly the rows the
executemany path stores (same bytes, same chain), refuse nothing the other path takes, and
fail the same way: a trigger that drops or adds rows, a SQLite error raised by a trigger,
a text holding U+0000 (the C calling convention cannot carry it: the other path takes it).
"""
from __future__ import annotations

import apsw
import pytest

from heliosdb import errors
from heliosdb.audit import chain, store
from heliosdb.audit.events import COLUMNS, EventFields
from heliosdb.audit.verify import verify_connection as verify_chain

from helpers.audit_log import TABLE, make_log, sample_events
from helpers.chain_impl import select

NEEDS_C = pytest.mark.skipif("c" not in chain.available_impls(), reason="native module not built")
BATCH = chain.INSERT_IN_C_FROM * 3


def _rows(conn: apsw.Connection) -> list[tuple]:
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    return list(conn.execute(f"SELECT {cols} FROM {TABLE} ORDER BY id"))


def _calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Count the batches the C writer took (its Python entry point still runs)."""
    taken: list = []
    real = chain.insert_events

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(chain, "insert_events", spy)
    return taken


@NEEDS_C
def test_c_writer_stores_the_same_rows_as_executemany(tmp_path, monkeypatch):
    events = sample_events(BATCH) + [EventFields("INSERT", query="q" * 5000, target="é" * 3)]
    taken = _calls(monkeypatch)
    select(monkeypatch, "c")
    fast = make_log(str(tmp_path / "c.db"), 0)
    store.append(fast, TABLE, events, now_us=1_700_000_000_000_000, max_query_length=1000)
    store.append(fast, TABLE, events[:5], now_us=1)  # small batch: executemany
    assert taken == [True, False]
    select(monkeypatch, "pure")
    slow = make_log(str(tmp_path / "pure.db"), 0)
    store.append(slow, TABLE, events, now_us=1_700_000_000_000_000, max_query_length=1000)
    store.append(slow, TABLE, events[:5], now_us=1)
    assert taken == [True, False, False, False]
    assert _rows(fast) == _rows(slow)
    assert len(_rows(fast)) == len(events) + 5
    assert verify_chain(fast, TABLE).ok
    # the Merkle frontier the C path folded is the one the executemany path folded
    meta = "SELECT value FROM __audit_meta WHERE tbl = ? AND key = 'merkle_tree'"
    assert list(fast.execute(meta, (TABLE,))) == list(slow.execute(meta, (TABLE,)))


@NEEDS_C
def test_runs_of_equal_fields_keep_their_values(tmp_path, monkeypatch):
    """The C writer binds a text again only when it differs from the previous event's:
    runs of one statement, a text of the same length but other bytes, text -> NULL ->
    the same text, NULL -> empty text, all stored as the executemany path stores them."""
    base = EventFields("INSERT", target="main.t", user="alice", session_id="s1",
                       query="INSERT INTO t VALUES (?)", affected_rows=1)
    events = [base] * 20 + [
        base._replace(user="alicf"),            # same length, other bytes
        base._replace(user="alice"),
        base._replace(user=None),               # text -> NULL
        base._replace(user="alice"),            # NULL -> the text bound before the NULL
        base._replace(reason=""),               # NULL -> empty text
        base._replace(reason=None),
        base._replace(reason=""),
        base._replace(target="main.u", query="INSERT INTO u VALUES (?)"),
    ] + [base] * 5
    taken = _calls(monkeypatch)
    select(monkeypatch, "c")
    fast = make_log(str(tmp_path / "c.db"), 0)
    store.append(fast, TABLE, events, now_us=1_700_000_000_000_000)
    select(monkeypatch, "pure")
    slow = make_log(str(tmp_path / "pure.db"), 0)
    store.append(slow, TABLE, events, now_us=1_700_000_000_000_000)
    assert taken == [True, False]
    assert _rows(fast) == _rows(slow)
    users = [r[0] for r in fast.execute(f'SELECT "user" FROM {TABLE} ORDER BY id')]
    assert users[20:24] == ["alicf", "alice", None, "alice"]
    reasons = [r[0] for r in fast.execute(f"SELECT reason FROM {TABLE} ORDER BY id")]
    assert reasons[24:27] == ["", None, ""]
    assert verify_chain(fast, TABLE).ok


@NEEDS_C
def test_a_text_holding_nul_takes_the_other_path_and_is_stored_as_is(tmp_path, monkeypatch):
    taken = _calls(monkeypatch)
    select(monkeypatch, "c")
    conn = make_log(str(tmp_path / "c.db"), 0)
    events = sample_events(BATCH)
    events[7] = events[7]._replace(query="nul\x00inside")
    store.append(conn, TABLE, events)
    assert taken == [False]  # refused before writing anything
    assert conn.execute(f"SELECT query FROM {TABLE} WHERE id = 8").fetchall() == [
        ("nul\x00inside",)]
    assert verify_chain(conn, TABLE).ok


@pytest.mark.parametrize("body, count", [
    ("SELECT RAISE(IGNORE)", "dropped"),
    ("INSERT INTO side VALUES (1)", "added"),
])
def test_a_trigger_that_changes_the_row_count_fails_the_batch(tmp_path, monkeypatch, chain_impl,
                                                              body, count):
    taken = _calls(monkeypatch)
    conn = make_log(str(tmp_path / "c.db"), 0)
    conn.execute("CREATE TABLE side(x)")
    when = "BEFORE" if count == "dropped" else "AFTER"
    conn.execute(f"CREATE TRIGGER planted {when} INSERT ON {TABLE} BEGIN {body}; END")
    with pytest.raises(errors.AuditIntegrityError, match="did not store the 48 event"):
        store.append(conn, TABLE, sample_events(BATCH))
    assert taken == [chain_impl == "c"]
    assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall() == [(0,)]


def test_a_sqlite_error_in_the_batch_is_raised_as_its_heliosdb_class(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "c.db"), 3)
    conn.execute(f"CREATE TRIGGER planted BEFORE INSERT ON {TABLE} WHEN new.id = 20 "
                 "BEGIN SELECT RAISE(ABORT, 'planted trigger says no'); END")
    with pytest.raises(errors.IntegrityError, match="planted trigger says no") as info:
        store.append(conn, TABLE, sample_events(BATCH))
    assert info.value.sqlite_errorname.startswith("SQLITE_CONSTRAINT")
    # store.append's own transaction rolled back: nothing of the batch is left
    assert conn.execute(f"SELECT max(id) FROM {TABLE}").fetchall() == [(3,)]
    conn.execute("DROP TRIGGER planted")
    assert verify_chain(conn, TABLE).ok


def test_wrong_types_are_refused_like_the_other_path(tmp_path, chain_impl):
    conn = make_log(str(tmp_path / "c.db"), 0)
    events = sample_events(BATCH)
    events[3] = events[3]._replace(affected_rows=True)
    with pytest.raises(errors.ProgrammingError, match="wrong type"):
        store.append(conn, TABLE, events)
    events[3] = events[3]._replace(affected_rows=1 << 64)
    with pytest.raises(errors.DataError):
        store.append(conn, TABLE, events)
    events[3] = events[3]._replace(affected_rows=1, user="\ud800")
    with pytest.raises(errors.DataError):
        store.append(conn, TABLE, events)
    assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall() == [(0,)]


@NEEDS_C
def test_a_value_that_says_it_equals_none_is_not_written_as_null(tmp_path, monkeypatch):
    """The C writer's entry point, called directly (store.append refuses a field that is
    no str before it gets there): a text column that is None in the first event and an
    object claiming to equal None in the others is not turned into NULL slots; the batch
    is refused as any value that is no str is, and nothing is written."""
    class SaysNone:
        def __eq__(self, other):
            return other is None

        __hash__ = object.__hash__

    select(monkeypatch, "c")
    conn = make_log(str(tmp_path / "c.db"), 0)
    n = BATCH
    texts = ["INSERT", "main.t", "alice", "s1", "q", None, None, None, None, None] * n
    for i in range(1, n):
        texts[10 * i + 9] = SaysNone()  # the reason field
    with conn:
        with pytest.raises(TypeError):
            chain.insert_events(conn, store._insert_sql(TABLE), bytes(32), 1,
                                1_700_000_000_000_000, [1] * n, [1] * n, texts)
    assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall() == [(0,)]


@NEEDS_C
def test_texts_that_look_like_the_null_slot_are_stored_as_given(tmp_path, monkeypatch):
    """The C writer's buffer spells NULL as the one-character slot U+0001: a text that is
    exactly that sends the batch down the other path; one that merely contains it does not."""
    taken = _calls(monkeypatch)
    select(monkeypatch, "c")
    conn = make_log(str(tmp_path / "c.db"), 0)
    events = sample_events(BATCH)
    events[2] = events[2]._replace(query="\x01", error=None)
    events[3] = events[3]._replace(target="a\x01b")
    store.append(conn, TABLE, events)
    events[2] = events[2]._replace(query="\x01\x01")
    store.append(conn, TABLE, events)
    assert taken == [False, True]
    got = conn.execute(f"SELECT query, error, target FROM {TABLE} WHERE id IN (3, 4, 51, 52) "
                       "ORDER BY id").fetchall()
    assert got == [("\x01", None, events[2].target), (events[3].query, events[3].error, "a\x01b"),
                   ("\x01\x01", None, events[2].target),
                   (events[3].query, events[3].error, "a\x01b")]
    assert verify_chain(conn, TABLE).ok


def test_an_event_read_back_is_the_dataclass_it_would_be_built_as(tmp_path):
    """AuditEvent.from_row skips the frozen dataclass's __init__: same fields, equality,
    hash, repr and immutability; a row of the wrong length is refused as __init__ does."""
    import dataclasses

    from heliosdb.audit.events import AuditEvent

    conn = make_log(str(tmp_path / "r.db"), 20)
    for ev in store.read_events(conn, TABLE):
        row = tuple(getattr(ev, c) for c in COLUMNS)
        built = AuditEvent(*row)
        assert ev == built and hash(ev) == hash(built) and repr(ev) == repr(built)
        assert dataclasses.astuple(ev) == row
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.id = 0
    with pytest.raises(TypeError):
        AuditEvent.from_row(row[:-1])


def _uniform(n: int) -> list[EventFields]:
    """What the capture queues for a run of one statement: the same texts but the
    metadata, and the same fields None in every event (error, row values, reason)."""
    return [EventFields("INSERT", target="t", user="alice", session_id="s-1",
                        query="INSERT INTO t VALUES (?)", affected_rows=1,
                        metadata=f'{{"execution_time_ms":{i / 1000!r}}}')
            for i in range(n)]


@NEEDS_C
@pytest.mark.parametrize("change, column_path, c_path", [
    (None, True, True),  # fields None in every event: NULL slots a column at a time
    ({"reason": "ticket 42"}, False, True),  # one event has a reason: text by text
    ({"target": "a\x01b"}, True, True),  # holds the slot's character: no matter
    ({"query": "\x01"}, False, False),  # is the slot: the executemany path
    ({"user": None}, False, True),  # a column of texts with one NULL
    ({"affected_rows": None}, True, True),
])
def test_uniform_batches_store_the_same_rows_as_executemany(tmp_path, monkeypatch, change,
                                                            column_path, c_path):
    """insert_events builds the buffer of a batch whose fields are each None in every
    event or in none a column at a time: the rows, checksums and Merkle frontier are
    those the pure path stores, and any batch it cannot take that way goes text by text."""
    events = _uniform(BATCH)
    if change:
        events[5] = events[5]._replace(**change)
    select(monkeypatch, "c")
    fast = make_log(str(tmp_path / "c.db"), 3)
    built: list = []
    real = chain._slotted
    monkeypatch.setattr(chain, "_slotted", lambda *a: built.append(real(*a)) or built[-1])
    taken = _calls(monkeypatch)
    store.append(fast, TABLE, events, now_us=1_700_000_000_000_000)
    assert taken == [c_path]
    assert (built[0] is not None) == column_path
    select(monkeypatch, "pure")
    slow = make_log(str(tmp_path / "pure.db"), 3)
    store.append(slow, TABLE, events, now_us=1_700_000_000_000_000)
    assert _rows(fast) == _rows(slow)
    assert verify_chain(fast, TABLE).ok
    meta = "SELECT value FROM __audit_meta WHERE tbl = ? AND key = 'merkle_tree'"
    assert list(fast.execute(meta, (TABLE,))) == list(slow.execute(meta, (TABLE,)))


@NEEDS_C
def test_uniform_batches_refuse_wrong_types_like_the_other_path(tmp_path, monkeypatch):
    select(monkeypatch, "c")
    conn = make_log(str(tmp_path / "c.db"), 0)
    for change, exc in (({"affected_rows": True}, errors.ProgrammingError),
                        ({"query": 5}, errors.ProgrammingError),
                        ({"error": b"x"}, errors.ProgrammingError),
                        ({"user": "\ud800"}, errors.DataError)):
        events = _uniform(BATCH)
        events[9] = events[9]._replace(**change)
        with pytest.raises(exc):
            store.append(conn, TABLE, events)
    assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall() == [(0,)]
