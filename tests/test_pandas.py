"""pandas ``to_sql`` / ``read_sql`` through a heliosdb connection, compared with sqlite3.

pandas treats any DB-API connection that is not a ``sqlite3.Connection`` (or SQLAlchemy
connectable) as "sqlite3-like" and warns once (UserWarning "pandas only supports SQLAlchemy
connectable ..."); that warning is pandas' and is expected for heliosdb. Everything else
(the data and the dtypes read back) must be the same as through stdlib sqlite3.
"""
from __future__ import annotations

import math
import sqlite3
import warnings

import pytest

from helpers.dbapi import mod  # noqa: F401 - `mod` is a fixture

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")


def frame():
    return pd.DataFrame({
        "i": pd.Series([1, -2, 2**62, 0], dtype="int64"),
        "small": pd.Series([1, 2, 3, 4], dtype="int32"),
        "f": [1.5, float("nan"), -0.25, 1e300],
        "s": ["a", None, "ünï", "it's"],
        "b": [True, False, True, False],
        "ts": pd.to_datetime(["2024-01-02 03:04:05", None, "1999-12-31 23:59:59.123456",
                              "2000-02-29"], format="ISO8601"),
        "d": pd.to_datetime(["2024-01-02", "2024-01-03", None, "2024-01-05"]).date,
        "opt": pd.array([1, None, 3, None], dtype="Int64"),
    })


def quietly(fn):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy",
                                category=UserWarning)
        return fn()


def round_trip(mod, path):
    df = frame()
    con = mod.connect(str(path))
    out = {}
    out["written"] = quietly(lambda: df.to_sql("t", con, index=False))
    out["append"] = quietly(lambda: df.iloc[:2].to_sql("t", con, index=False, if_exists="append"))
    out["exists"] = type(quietly(lambda: _raises(lambda: df.to_sql("t", con)))).__name__
    out["schema"] = con.execute("select sql from sqlite_master where name = 't'").fetchone()
    back = quietly(lambda: pd.read_sql("select * from t", con))
    parsed = quietly(lambda: pd.read_sql("select * from t", con, parse_dates={"ts": {"format": "ISO8601"}, "d": {"format": "ISO8601"}}))
    query = quietly(lambda: pd.read_sql_query("select i, s from t where i > ? order by i", con,
                                              params=(0,)))
    named = quietly(lambda: pd.read_sql_query("select count(*) as n from t where s = :s", con,
                                              params={"s": "a"}))
    chunks = quietly(lambda: [len(c) for c in pd.read_sql("select * from t", con, chunksize=4)])
    out["replace"] = quietly(lambda: df.iloc[:1].to_sql("t", con, index=False,
                                                        if_exists="replace"))
    out["after replace"] = con.execute("select count(*) from t").fetchone()
    con.close()
    return out, back, parsed, query, named, chunks


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


def test_round_trip_matches_sqlite3(mod, tmp_path):
    mine = round_trip(mod, tmp_path / "mine.db")
    ref = round_trip(sqlite3, tmp_path / "ref.db")
    assert mine[0] == ref[0]
    for got, want in zip(mine[1:5], ref[1:5]):
        assert list(got.dtypes.astype(str)) == list(want.dtypes.astype(str))
        pd.testing.assert_frame_equal(got, want)
    assert mine[5] == ref[5] == [4, 2]


def test_round_trip_values(mod, tmp_path):
    out, back, parsed, query, named, chunks = round_trip(mod, tmp_path / "x.db")
    assert out["written"] == 4 and out["append"] == 2
    assert out["exists"] == "ValueError"
    assert out["after replace"] == (1,)
    assert len(back) == 6
    assert back["i"].dtype == np.int64 and back["i"].tolist()[:4] == [1, -2, 2**62, 0]
    assert back["f"].dtype == np.float64 and math.isnan(back["f"][1])
    assert [None if pd.isna(v) else v for v in back["s"].tolist()[:4]] == ["a", None, "ünï", "it's"]
    assert back["b"].tolist()[:4] == [1, 0, 1, 0]
    assert parsed["ts"][0] == pd.Timestamp("2024-01-02 03:04:05")
    assert pd.isna(parsed["ts"][1])
    assert parsed["ts"][2] == pd.Timestamp("1999-12-31 23:59:59.123456")
    assert query["i"].tolist() == [1, 1, 2**62]
    assert named["n"].tolist() == [2]


def test_read_sql_uses_description_of_empty_result(mod, tmp_path):
    con = mod.connect(str(tmp_path / "e.db"))
    con.execute("create table t(a integer, b text)")
    df = quietly(lambda: pd.read_sql("select * from t", con))
    assert list(df.columns) == ["a", "b"] and len(df) == 0
    con.close()


def test_to_sql_in_a_transaction_is_committed(mod, tmp_path):
    path = tmp_path / "c.db"
    con = mod.connect(str(path))
    quietly(lambda: pd.DataFrame({"x": [1, 2, 3]}).to_sql("t", con, index=False))
    other = mod.connect(str(path))
    assert other.execute("select count(*) from t").fetchone() == (3,)
    other.close()
    con.close()


def test_time_column(mod, tmp_path):
    """pandas registers an adapter for datetime.time with stdlib sqlite3 only
    (pandas.io.sql.SQLiteTable._register_date_adapters), so through heliosdb a time column
    fails to bind unless heliosdb handles it the same way."""
    import datetime

    def write(m, path):
        con = m.connect(str(path))
        df = pd.DataFrame({"t": [datetime.time(1, 2, 3), datetime.time(4, 5, 6, 7)]})
        try:
            quietly(lambda: df.to_sql("x", con, index=False))
            return con.execute("select * from x").fetchall()
        except Exception as e:  # noqa: BLE001
            return type(e).__name__, str(e)
        finally:
            con.close()

    assert write(mod, tmp_path / "m.db") == write(sqlite3, tmp_path / "r.db") == [
        ("01:02:03.000000",), ("04:05:06.000007",)]
