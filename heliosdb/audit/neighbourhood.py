"""What sits next to the audit tables in the schema: objects HeliosDB did not create.

An audit log is only as good as the schema around it. A ``BEFORE INSERT`` trigger on the
log that runs ``SELECT RAISE(IGNORE)`` silently drops every event while the chain stays
intact; a trigger on an ordinary table can write forged rows into the log; a view can
shadow it. None of this breaks a hash, so the verifier must look at the schema itself.

Public API (stable; the connection code calls it at connect time):

:func:`find_foreign_schema(db, tables=None) <find_foreign_schema>` -> ``list[ForeignObject]``
    Every trigger, view or index *on* an audit table (or on ``__audit_meta``) that HeliosDB
    did not create, and every trigger or view elsewhere whose SQL writes to an audit table
    (``INSERT``/``REPLACE``/``UPDATE``/``DELETE`` naming it), and every view that shadows
    one (a view that only reads the log, a report, is not foreign).
    ``tables`` are the audit tables to protect (default: ``__audit_log``); the meta table
    and every audit table found by :func:`find_audit_tables` are always added. Looks at
    every schema of the connection (``main``, ``temp``, attached ones). An empty list
    means nothing foreign was found.

:func:`find_audit_tables(db) <find_audit_tables>` -> ``list[str]``
    The audit tables in the file: every table with all of the audit log's columns, and
    every table named in ``__audit_meta`` (whether or not it exists yet), so that a
    connection can protect all of them, not only the one its config names.

What HeliosDB itself creates (anything else is foreign): the audit table, the meta table,
and the indexes of :func:`heliosdb.audit.store.known_indexes` (the current layout's, the
covering one's and the legacy one's, each name with exactly its SQL: a partial index
whose WHERE differs by a word is foreign) (SQLite's own ``sqlite_autoindex_*`` indexes
are accepted).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import apsw

from ..errors import translate
from .events import COLUMNS
from .store import DEFAULT_TABLE, META_TABLE, TABLE_NAME_RE, known_indexes

__all__ = ["ForeignObject", "find_foreign_schema", "find_audit_tables", "audited_attachments",
           "recorded_audit_tables", "recorded_in"]


@dataclass(frozen=True)
class ForeignObject:
    """One schema object HeliosDB did not create that touches an audit table.

    ``type``: ``"trigger"``, ``"view"`` or ``"index"``; ``schema``: ``"main"``,
    ``"temp"`` or an attached name; ``name``; ``table``: the table it is attached to
    (``tbl_name`` in ``sqlite_schema``); ``audit_table``: the audit table it touches;
    ``reason``: why it is foreign; ``sql``: its SQL as stored.
    """

    type: str
    schema: str
    name: str
    table: str
    audit_table: str
    reason: str
    sql: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.type} {self.schema}.{self.name} {self.reason}"


# --- a small SQL tokenizer: names and keywords, quotes and comments handled ---------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<c1>--[^\n]*)
  | (?P<c2>/\*.*?(?:\*/|\Z))
  | (?P<str>'(?:[^']|'')*'?)
  | (?P<dq>"(?:[^"]|"")*"?)
  | (?P<bq>`(?:[^`]|``)*`?)
  | (?P<br>\[[^\]]*\]?)
  | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, value) tokens: kind ``kw`` (a bare word, upper-cased), ``name`` (a quoted
    identifier, unquoted), ``str`` (a string literal) or ``op``; comments dropped."""
    out = []
    for m in _TOKEN.finditer(sql or ""):
        kind = m.lastgroup
        v = m.group()
        if kind in ("ws", "c1", "c2"):
            continue
        if kind == "word":
            out.append(("kw", v.upper()))
        elif kind == "dq":
            out.append(("name", v[1:-1].replace('""', '"') if v.endswith('"') and len(v) > 1
                        else v[1:]))
        elif kind == "bq":
            out.append(("name", v[1:-1].replace("``", "`")))
        elif kind == "br":
            out.append(("name", v[1:-1]))
        elif kind == "str":
            out.append(("str", v))
        else:
            out.append(("op", v))
    return out


def _name_at(toks: list[tuple[str, str]], i: int) -> tuple[Optional[str], int]:
    """The (possibly schema-qualified) object name starting at token i: (name, next i)."""
    if i >= len(toks) or toks[i][0] not in ("kw", "name", "str"):
        return None, i
    name = toks[i][1]
    if toks[i][0] == "str":
        name = name[1:-1].replace("''", "'")
    i += 1
    if i + 1 < len(toks) and toks[i] == ("op", ".") and toks[i + 1][0] in ("kw", "name",
                                                                         "str"):
        name = toks[i + 1][1]
        if toks[i + 1][0] == "str":
            name = name[1:-1].replace("''", "'")
        i += 2
    return name, i


_CONFLICT = {"ROLLBACK", "ABORT", "REPLACE", "FAIL", "IGNORE"}


def _written_tables(sql: str) -> set[str]:
    """Lower-cased names of the tables the statements in ``sql`` write to."""
    toks = _tokens(sql)
    out: set[str] = set()
    n = len(toks)
    for i, (kind, v) in enumerate(toks):
        if kind != "kw":
            continue
        j = None
        if v in ("INSERT", "REPLACE"):
            k = i + 1
            while k < n and toks[k][0] == "kw" and toks[k][1] != "INTO":
                k += 1  # INSERT OR IGNORE INTO ...
            if k < n and toks[k] == ("kw", "INTO"):
                j = k + 1
        elif v == "UPDATE":
            # skip "UPDATE OF col" in a trigger header (AFTER UPDATE OF x ON t)
            if i + 1 < n and toks[i + 1] == ("kw", "OF"):
                continue
            j = i + 1
            if j + 1 < n and toks[j] == ("kw", "OR") and toks[j + 1][1] in _CONFLICT:
                j += 2
        elif v == "DELETE":
            if i + 1 < n and toks[i + 1] == ("kw", "FROM"):
                j = i + 2
        if j is not None:
            name, _ = _name_at(toks, j)
            if name is not None and name.upper() not in ("ON", "SET", "OF"):
                out.add(name.lower())
    return out


def _trigger_body(sql: str) -> str:
    """The statements of a CREATE TRIGGER (after its BEGIN), or all of it if unparsable."""
    m = re.search(r"\bBEGIN\b", sql or "", re.IGNORECASE)
    return sql[m.end():] if m else (sql or "")


# --- discovery ------------------------------------------------------------------------------

def _schemas(db: apsw.Connection) -> list[str]:
    try:
        return [r[1] for r in db.execute("PRAGMA database_list")]
    except apsw.Error as exc:
        raise translate(exc) from None


def _master(schema: str) -> str:
    return "sqlite_temp_master" if schema == "temp" else \
        '"' + schema.replace('"', '""') + '".sqlite_master'


def _rows(db: apsw.Connection, schema: str) -> list[tuple]:
    # Fail closed: a schema that cannot be read cannot be declared clean.
    try:
        return list(db.execute(f"SELECT type, name, tbl_name, sql FROM {_master(schema)}"))
    except apsw.Error as exc:
        raise translate(exc) from None


def schema_rows(db: apsw.Connection) -> dict[str, list[tuple]]:
    """``(type, name, tbl_name, sql)`` of every schema object, per attached schema (in
    ``PRAGMA database_list`` order): one read of the schema that :func:`find_audit_tables`
    and :func:`find_foreign_schema` can share (``rows=``), as a connection's open does."""
    return {schema: _rows(db, schema) for schema in _schemas(db)}


def audited_attachments(db: apsw.Connection) -> list[str]:
    """The attached databases (not main, not temp) that hold an audit log of their own
    (a ``__audit_meta`` table). Written through another connection's attachment, their
    changes would be recorded in no log of theirs. Names are compared here, not with
    SQL's lower(), which a user function may replace."""
    meta = META_TABLE.lower()
    return [schema for schema in _schemas(db) if schema not in ("main", "temp")
            and any(t == "table" and n.lower() == meta for t, n in
                    _tables_of_attached(db, schema))]


def _tables_of_attached(db: apsw.Connection, schema: str) -> list[tuple]:
    """(type, name) of the schema objects of an attached database, read through a
    connection of their own when the file can be opened so: read through ``db`` inside an
    open transaction, the schema stays locked until it ends, and the DETACH that refuses
    an audited file would fail ("database is locked")."""
    path = db.db_filename(schema)
    if path:
        # vfsname() names the stack of shims the file is open through ("heliosdb/unix"
        # for an encrypted one): the outermost is the VFS to open it with.
        vfs = (db.vfsname(schema) or "").split("/")[0] or None
        try:
            other = _open_read_only(path, vfs)
        except apsw.Error:
            other = None
        if other is not None:
            try:
                return [(t, n) for t, n, _tbl, _sql in _rows(other, "main")]
            except Exception:  # noqa: BLE001 - unreadable so: read it through db
                pass
            finally:
                other.close()
    return [(t, n) for t, n, _tbl, _sql in _rows(db, schema)]


def _open_read_only(path: str, vfs: Optional[str]) -> apsw.Connection:
    return apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY, vfs=vfs)


#: The audit log's columns, lower-cased: a table with all of them is a log.
_LOG_COLUMNS = frozenset(c.lower() for c in COLUMNS)


def find_audit_tables(db: apsw.Connection, *,
                      rows: Optional[dict[str, list[tuple]]] = None,
                      meta: Optional[dict] = None) -> list[str]:
    """Audit tables in the file (see the module docstring), sorted, without the meta
    table. Names from ``__audit_meta`` are included only when they are plain identifiers
    (anything else could not be an audit table HeliosDB made). ``rows``: what
    :func:`schema_rows` just read (else the schema is read here); ``meta``: every row of
    ``__audit_meta`` as :func:`heliosdb.audit.policy.read_meta` just read it (else the
    table names are read here)."""
    found: set[str] = set(recorded_audit_tables(db) if meta is None else recorded_in(meta))
    want = _LOG_COLUMNS
    for schema, schema_objects in (schema_rows(db) if rows is None else rows).items():
        for typ, name, _tbl, sql in schema_objects:
            if typ != "table" or name.lower() == META_TABLE or name.startswith("sqlite_"):
                continue
            if name in found:
                continue  # recorded in __audit_meta: found already, whatever its columns
            text = sql.lower() if sql is not None else None
            if text is not None and not all(c in text for c in want):
                # Every column a table has is named in its stored CREATE TABLE text (ALTER
                # TABLE ADD COLUMN rewrites it): a table whose text lacks one is not a log,
                # and needs no PRAGMA (an open would otherwise run one per user table).
                continue
            try:
                cols = {r[1].lower() for r in db.execute(
                    f'PRAGMA "{schema}".table_info("{name.replace(chr(34), chr(34) * 2)}")')}
            except apsw.Error:
                continue  # e.g. a virtual table whose module is not loaded: not a log
            if want <= cols:  # a copy made with SELECT * also has the generated columns
                found.add(name)
    return sorted(found)


def recorded_audit_tables(db: apsw.Connection) -> list[str]:
    """The audit tables ``__audit_meta`` keeps rows for (whether or not they still exist),
    sorted; plain identifiers only (its file-wide rows, such as ``*``, are not tables).
    One query: what a connection reads at open, before any schema scan."""
    try:
        rows = db.execute(f"SELECT DISTINCT tbl FROM {META_TABLE}").fetchall()
    except apsw.SQLError:
        return []  # no meta table
    except apsw.Error as exc:  # unreadable: fail closed, as a heliosdb error
        raise translate(exc) from None
    return sorted(t for (t,) in rows if isinstance(t, str) and TABLE_NAME_RE.match(t))


def recorded_in(meta: dict) -> list[str]:
    """:func:`recorded_audit_tables`, answered from every row of ``__audit_meta`` already
    read (``{(tbl, key): value}``, :func:`heliosdb.audit.policy.read_meta`)."""
    names = {t for t, _key in meta}  # (a few names for many keys: each name checked once)
    return sorted(t for t in names if isinstance(t, str) and TABLE_NAME_RE.match(t))


@functools.lru_cache(maxsize=64)
def _expected_indexes(table: str) -> dict[str, str]:
    # The current layout's, the covering and the legacy one's: a function of the name
    # alone, asked at every audited open (twelve SQL texts built and checked). Kept per
    # name; the dict is only read (find_foreign_schema copies it into its own).
    return known_indexes(table)


def find_foreign_schema(db: apsw.Connection,
                        tables: Optional[Iterable[str]] = None, *,
                        audit_tables: Optional[Iterable[str]] = None,
                        rows: Optional[dict[str, list[tuple]]] = None) -> list[ForeignObject]:
    """Schema objects HeliosDB did not create that act on an audit table.

    ``tables``: the audit tables to protect (default ``["__audit_log"]``); the meta table
    and every table :func:`find_audit_tables` finds are added. Returns a list of
    :class:`ForeignObject` (empty when the neighbourhood is clean), in schema order.
    Reads only ``sqlite_schema`` of each attached schema (no table data). A schema that
    cannot be read raises (as its :mod:`heliosdb.errors` class): it cannot be declared
    clean. ``audit_tables``: what :func:`find_audit_tables` returned, when the caller has
    just asked it (the scan is not repeated); ``rows``: what :func:`schema_rows` just
    read (else the schema is read here).
    """
    protected = {DEFAULT_TABLE.lower()} if tables is None else {t.lower() for t in tables}
    if rows is None:
        rows = schema_rows(db)
    if audit_tables is None:
        audit_tables = find_audit_tables(db, rows=rows)
    protected |= {t.lower() for t in audit_tables}
    protected.add(META_TABLE.lower())
    # what HeliosDB creates for each audit table
    expected: dict[str, str] = {}
    for t in protected:
        if t != META_TABLE.lower() and TABLE_NAME_RE.match(t) and not t.startswith("sqlite_"):
            expected.update(_expected_indexes(t))
    out: list[ForeignObject] = []
    for schema, schema_objects in rows.items():
        for typ, name, tbl, sql in schema_objects:
            tl = (tbl or "").lower()
            if typ == "index":
                if tl not in protected:
                    continue
                if name.startswith("sqlite_autoindex_") and sql is None:
                    continue
                want = expected.get(name.lower())
                if want is not None and sql == want:
                    continue
                why = ("is not one HeliosDB creates" if want is None else
                       "has other SQL than HeliosDB's index of that name")
                out.append(ForeignObject("index", schema, name, tbl, tbl,
                                         f"on audit table {tbl} {why}", sql))
            elif typ == "trigger":
                if tl in protected:
                    out.append(ForeignObject("trigger", schema, name, tbl, tbl,
                                             f"on audit table {tbl}: HeliosDB creates no "
                                             "trigger there (it could drop, alter or add "
                                             "events)", sql))
                    continue
                hit = sorted(_written_tables(_trigger_body(sql or "")) & protected)
                if hit:
                    out.append(ForeignObject("trigger", schema, name, tbl, hit[0],
                                             f"on {tbl} writes to audit table {hit[0]}", sql))
            elif typ == "view":
                if tl in protected:
                    out.append(ForeignObject("view", schema, name, tbl, tbl,
                                             f"shadows audit table {tbl}", sql))
                    continue
                # A view that only reads the log (a report) cannot change it: what could
                # (an INSTEAD OF trigger writing to the log) is caught as a trigger.
            elif typ == "table" and schema == "temp" and tl in protected:
                out.append(ForeignObject("table", schema, name, tbl, tbl,
                                         f"in schema {schema} has the name of audit table "
                                         f"{tbl} and can shadow it", sql))
    return out
