"""SQLAlchemy 2 (Core and ORM) on heliosdb connections, compared with stdlib sqlite3.

Two ways to plug heliosdb in:
* ``create_engine("sqlite://", creator=lambda: heliosdb.connect(path))``: the pysqlite dialect
  with connections made by heliosdb (the dialect's ``dbapi`` stays the stdlib module);
* ``create_engine("sqlite+pysqlite:///path", module=heliosdb)``: heliosdb *is* the DB-API
  module, so SQLAlchemy wraps heliosdb's exceptions (``sqlalchemy.exc.IntegrityError``...).
"""
from __future__ import annotations

import datetime
import sqlite3

import pytest

from helpers.dbapi import load, mod  # noqa: F401 - `mod` is a fixture

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import (ForeignKey, String, create_engine, event, func, select,  # noqa: E402
                        text)
from sqlalchemy.exc import IntegrityError as SAIntegrityError  # noqa: E402
from sqlalchemy.orm import (DeclarativeBase, Mapped, Session, mapped_column,  # noqa: E402
                            relationship, selectinload)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    born: Mapped[datetime.date | None]
    books: Mapped[list["Book"]] = relationship(back_populates="author",
                                               cascade="all, delete-orphan",
                                               order_by="Book.id")


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    price: Mapped[float | None]
    added: Mapped[datetime.datetime | None]
    cover: Mapped[bytes | None]
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def engine_for(mod, path, how):
    if how == "creator":
        return create_engine("sqlite://", creator=lambda: mod.connect(str(path)))
    return create_engine(f"sqlite+pysqlite:///{path}", module=mod)


def orm_round_trip(mod, path, how):
    engine = engine_for(mod, path, how)
    out = []
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        a = Author(name="Le Guin", born=datetime.date(1929, 10, 21))
        a.books = [Book(title="The Dispossessed", price=9.5,
                        added=datetime.datetime(2024, 1, 2, 3, 4, 5, 600000), cover=b"\x00\xff"),
                   Book(title="A Wizard of Earthsea", price=None)]
        b = Author(name="Lem")
        b.books = [Book(title="Solaris", price=12.0)]
        s.add_all([a, b])
        s.commit()
        out.append((a.id, b.id, [bk.id for bk in a.books]))

    with Session(engine) as s:
        authors = s.scalars(select(Author).options(selectinload(Author.books))
                            .order_by(Author.name)).all()
        out.append([(x.name, x.born, [(bk.title, bk.price, bk.added, bk.cover) for bk in x.books])
                    for x in authors])
        out.append(s.execute(select(Author.name, func.count(Book.id)).join(Book)
                             .group_by(Author.name).order_by(Author.name)).all())

    # update, and the ORM's rowcount check (StaleDataError if rowcount were wrong)
    with Session(engine) as s:
        book = s.scalars(select(Book).where(Book.title == "Solaris")).one()
        book.price = 15.0
        s.commit()
        out.append(s.scalar(select(Book.price).where(Book.title == "Solaris")))

    # rollback
    with Session(engine) as s:
        lem = s.scalars(select(Author).where(Author.name == "Lem")).one()
        lem.name = "Stanisław Lem"
        s.add(Book(title="never", author=lem))
        s.flush()
        out.append(s.scalar(select(func.count(Book.id))))
        s.rollback()
        out.append((s.scalar(select(func.count(Book.id))),
                    s.scalars(select(Author.name).order_by(Author.id)).all()))

    # delete with cascade
    with Session(engine) as s:
        s.delete(s.scalars(select(Author).where(Author.name == "Lem")).one())
        s.commit()
        out.append(s.scalars(select(Book.title).order_by(Book.id)).all())

    # an integrity error
    with Session(engine) as s:
        s.add(Author(name="Le Guin"))
        try:
            s.commit()
            out.append("no error")
        except Exception as e:  # noqa: BLE001
            out.append((type(e).__module__.split(".")[0], type(e).__name__,
                        type(getattr(e, "orig", e)).__name__))
            s.rollback()

    # Core, text(), named parameters, executemany through insert()
    with engine.begin() as conn:
        conn.execute(text("create table kv(k text primary key, v)"))
        conn.execute(text("insert into kv values (:k, :v)"),
                     [{"k": "a", "v": 1}, {"k": "b", "v": 2.5}, {"k": "c", "v": None}])
    with engine.connect() as conn:
        out.append(conn.execute(text("select * from kv order by k")).all())
        res = conn.execute(text("update kv set v = 0 where k in ('a', 'b')"))
        out.append(res.rowcount)
        conn.rollback()
        out.append(conn.execute(text("select v from kv where k = 'a'")).scalar())
        out.append(list(conn.execute(text("select k from kv order by k")).mappings()))
    engine.dispose()
    return out


@pytest.mark.parametrize("how", ["creator", "module"])
def test_orm_round_trip(mod, tmp_path, how):
    mine = orm_round_trip(mod, tmp_path / "mine.db", how)
    ref = orm_round_trip(sqlite3, tmp_path / "ref.db", how)
    if mod is sqlite3 or how == "module":
        assert mine == ref
    else:
        # with creator= the dialect's dbapi is stdlib sqlite3: heliosdb's IntegrityError is
        # not a sqlite3.Error, so SQLAlchemy cannot wrap it. Everything else must agree.
        assert mine[:7] == ref[:7] and mine[8:] == ref[8:]
        assert mine[7] == ("heliosdb", "IntegrityError", "IntegrityError")
    assert ref[7] == ("sqlalchemy", "IntegrityError", "IntegrityError")
    assert ref[1][0][0] == "Le Guin"


def test_module_dialect_wraps_heliosdb_errors(tmp_path):
    heliosdb = load("heliosdb")
    engine = create_engine(f"sqlite+pysqlite:///{tmp_path / 'x.db'}", module=heliosdb)
    with engine.begin() as conn:
        conn.execute(text("create table t(x unique)"))
        conn.execute(text("insert into t values (1)"))
    with pytest.raises(SAIntegrityError) as info:
        with engine.begin() as conn:
            conn.execute(text("insert into t values (1)"))
    assert isinstance(info.value.orig, heliosdb.IntegrityError)
    assert engine.dialect.dbapi is heliosdb
    engine.dispose()


def test_engine_connections_are_heliosdb(tmp_path):
    heliosdb = load("heliosdb")
    engine = create_engine("sqlite://", creator=lambda: heliosdb.connect(str(tmp_path / "c.db")))
    seen = []
    event.listen(engine, "connect", lambda dbapi_con, rec: seen.append(type(dbapi_con)))
    with engine.connect() as conn:
        assert conn.execute(text("select 1")).scalar() == 1
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, heliosdb.Connection)
    assert seen and issubclass(seen[0], heliosdb.Connection)
    engine.dispose()


def test_autocommit_isolation_level(mod, tmp_path):
    """SQLAlchemy's AUTOCOMMIT sets dbapi_connection.isolation_level = None."""
    path = tmp_path / "a.db"
    engine = create_engine(f"sqlite+pysqlite:///{path}", module=mod)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("create table t(x)"))
        conn.execute(text("insert into t values (1)"))
        other = mod.connect(str(path))
        assert other.execute("select count(*) from t").fetchone() == (1,)
        other.close()
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from t")).scalar() == 1
        assert conn.get_isolation_level() == "SERIALIZABLE"
    engine.dispose()
