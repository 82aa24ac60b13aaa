"""Python 3.12+ parity (issue 17): autocommit, LEGACY_TRANSACTION_CONTROL, getconfig /
setconfig; and the audited connection's refusals of settings that weaken its log."""
from __future__ import annotations

import sys

import pytest

import heliosdb
from helpers.dbapi import attempt, mod, same  # noqa: F401 - `mod` is a fixture

py312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3 3.12+ API")


def _autocommit(mod, path):
    out = [mod.LEGACY_TRANSACTION_CONTROL]
    db = str(path / "t.db")
    for mode in (mod.LEGACY_TRANSACTION_CONTROL, True, False):
        con = mod.connect(db, autocommit=mode)
        out.append((con.autocommit, con.in_transaction))
        con.execute("create table if not exists t(x)")
        con.execute("insert into t values (1)")
        out.append(con.in_transaction)
        con.commit()
        out.append(con.in_transaction)
        con.execute("insert into t values (2)")
        con.rollback()
        out.append((con.in_transaction, con.execute("select count(*) from t").fetchone()))
        con.executescript("insert into t values (3);")
        out.append(con.in_transaction)
        con.close()
    con = mod.connect(db)
    out.append(con.execute("select count(*) from t").fetchone())
    for value in (1, 2, None, "x"):
        out.append(attempt(mod, lambda: setattr(con, "autocommit", value)))
    con.execute("insert into t values (4)")
    out.append(con.in_transaction)
    con.autocommit = True  # commits what is pending
    out.append(con.in_transaction)
    con.autocommit = False  # opens a transaction
    out.append(con.in_transaction)
    con.execute("insert into t values (5)")
    con.close()  # rolls back
    con = mod.connect(db, isolation_level=None)
    out.append(con.execute("select count(*) from t").fetchone())
    out.append(attempt(mod, lambda: mod.connect(db, autocommit="yes")))
    return out


@py312
def test_autocommit(mod, tmp_path):
    same(_autocommit, mod, tmp_path)


def _config(mod, path):
    con = mod.connect(":memory:")
    names = sorted(n for n in dir(mod) if n.startswith("SQLITE_DBCONFIG_"))
    out = [names]
    for n in ("SQLITE_DBCONFIG_ENABLE_FKEY", "SQLITE_DBCONFIG_DEFENSIVE",
              "SQLITE_DBCONFIG_ENABLE_TRIGGER"):
        op = getattr(mod, n)
        before = con.getconfig(op)
        out.append((n, con.setconfig(op, not before), con.getconfig(op) is (not before)))
        con.setconfig(op)
        out.append(con.getconfig(op))
    out.append(attempt(mod, lambda: con.getconfig(12345)))
    out.append(attempt(mod, lambda: con.getconfig("x"), message=False))
    con.close()
    out.append(attempt(mod, lambda: con.getconfig(mod.SQLITE_DBCONFIG_DEFENSIVE)))
    return out


@py312
def test_getconfig_setconfig(mod, tmp_path):
    same(_config, mod, tmp_path)


@py312
@pytest.mark.parametrize("name, weak", [
    ("SQLITE_DBCONFIG_DEFENSIVE", False), ("SQLITE_DBCONFIG_WRITABLE_SCHEMA", True),
    ("SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION", True), ("SQLITE_DBCONFIG_RESET_DATABASE", True),
    ("SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER", True)])
def test_audited_setconfig_refuses_what_weakens_the_log(tmp_path, name, weak):
    con = heliosdb.connect(str(tmp_path / "a.db"), config="default")
    op = getattr(heliosdb, name)
    before = con.getconfig(op)
    assert before is not weak  # the audited connection starts in the safe setting
    with pytest.raises(heliosdb.AuditPolicyError):
        con.setconfig(op, weak)
    assert con.getconfig(op) is before
    con.setconfig(op, not weak)  # the safe direction stays allowed
    con.close()
    # the same call on a connection that is not audited is allowed, as in sqlite3
    plain = heliosdb.connect(str(tmp_path / "p.db"))
    plain.setconfig(op, weak)
    assert plain.getconfig(op) is weak
    plain.close()


@py312
def test_audited_trusted_schema_cannot_be_turned_back_on(tmp_path):
    con = heliosdb.connect(str(tmp_path / "a.db"), config="default")
    op = heliosdb.SQLITE_DBCONFIG_TRUSTED_SCHEMA
    con.setconfig(op, False)
    with pytest.raises(heliosdb.AuditPolicyError):
        con.setconfig(op, True)
    assert con.getconfig(op) is False
    con.close()


def test_audited_connection_refuses_extension_loading(tmp_path):
    con = heliosdb.connect(str(tmp_path / "a.db"), config="default")
    with pytest.raises(heliosdb.AuditPolicyError):
        con.enable_load_extension(True)
    with pytest.raises(heliosdb.AuditPolicyError):
        con.load_extension("/nonexistent/ext.so")
    con.enable_load_extension(False)  # harmless
    con.close()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="before 3.12 sqlite3 has no autocommit")
def test_no_autocommit_before_312(tmp_path):
    con = heliosdb.connect(":memory:")
    assert not hasattr(con, "autocommit") and not hasattr(con, "getconfig")
    assert not hasattr(heliosdb, "LEGACY_TRANSACTION_CONTROL")
    with pytest.raises(TypeError):
        heliosdb.connect(":memory:", autocommit=True)


py313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="sqlite3 3.13+ API")


def _py313(mod, path):
    import warnings

    con = mod.connect(":memory:")
    con.executescript("""
        create table some_table_2(id_1 integer); insert into some_table_2 values (3);
        create table test_table_1(id_2 integer); insert into test_table_1 values (1);
        create view view_1 as select * from some_table_2;
        create table p(id integer primary key); create table c(pid references p(id));
        insert into c values (7);
        """)
    out = [list(con.iterdump(filter="%_1")), list(con.iterdump())[:2]]
    out.append(attempt(mod, lambda: list(con.iterdump(filter=1)), message=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        con.create_function("f", 0, func=lambda: 1)
        con.set_trace_callback(trace_callback=None)
        mod.connect(":memory:", 1.0).close()
    out.append([(w.category.__name__, str(w.message).split(" is deprecated")[0],
                 w.filename == __file__) for w in caught])
    return out


@py313
def test_python_313_changes(mod, tmp_path):
    same(_py313, mod, tmp_path)


def _named_with_sequence(mod, path):
    """sqlite3 3.12+ warns for each named parameter bound from a sequence, by execute and
    by executemany (once per parameter set); 3.12.0-3.12.3 count ?NNN as named too."""
    import warnings

    con = mod.connect(":memory:")
    con.execute("create table t(a, b)")
    out = []
    cases = [
        ("execute", "select :a, :b", (1, 2)),
        ("execute", "select ?1, ?2, ?1", (1, 2)),
        ("execute", "select @a, ?, $b", (1, 2, 3)),
        ("execute", "select :a, ?3", (1, 2, 3)),
        ("execute", "select ':a', ?", (1,)),  # in a string: no parameter
        ("execute", "select :a", {"a": 1}),
        ("executemany", "insert into t values (:a, :b)", [(1, 2), {"a": 3, "b": 4}, [5, 6]]),
        ("executemany", "insert into t values (?2, ?1)", [(1, 2)]),
        ("executemany", "insert into t values (:a, :b)", iter([(7, 8)])),
    ]
    for method, sql, params in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = attempt(mod, lambda: getattr(con, method)(sql, params).fetchall())
        out.append((method, sql, result,
                    [(w.category.__name__, str(w.message), w.filename) for w in caught]))
    out.append(con.execute("select * from t order by rowid").fetchall())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out.append(attempt(mod, lambda: con.executemany("insert into t values (:a, 0)", [(9,)])))
    con.close()
    return out


@py312
def test_named_parameters_bound_from_a_sequence_warn_as_sqlite3_does(mod, tmp_path):
    out = same(_named_with_sequence, mod, tmp_path)
    assert out[0][3][0][1].startswith("Binding 1 (':a') is a named parameter")
    assert out[0][3][0][2] == __file__  # the warning points at the caller
    assert len(out[6][3]) == 4  # two rows of three are sequences, two names each


def test_connection_left_open_at_exit_prints_what_sqlite3_prints(tmp_path):
    """3.13's sqlite3 warns (ResourceWarning, ignored by default) for a connection never
    closed; heliosdb's warning must not fail once Python is shutting down."""
    from helpers.processes import run_python

    code = ("import sys\nmod = __import__(sys.argv[1])\n"
            "con = mod.connect(sys.argv[2])\ncon.execute('create table t(a)')\n")
    want = run_python(code, "sqlite3", str(tmp_path / "s.db"))
    got = run_python(code, "heliosdb", str(tmp_path / "h.db"))
    assert (got.returncode, got.stderr) == (want.returncode, want.stderr) == (0, "")
