"""``Connection.iterdump``: the database as SQL text, statement by statement.

The output matches the stdlib's ``sqlite3`` dump (same order and quoting), so tools that
diff dumps keep working. It runs on the decrypted view: a dump of an encrypted database is
plaintext SQL, which is what a user asking for a dump wants; keep it safe accordingly.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    from .dbapi import Connection


def _quote_name(name: str) -> str:
    return '"{}"'.format(name.replace('"', '""'))


def _quote_value(value: str) -> str:
    return "'{}'".format(value.replace("'", "''"))


def _on_skipped_table(connection: "Connection", name: str, kind: str, skip: set) -> bool:
    if kind not in ("index", "trigger"):
        return False
    row = connection._apsw.execute(
        "SELECT tbl_name FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return bool(row and row[0] in skip)


def iterdump(connection: "Connection", filter: Optional[str] = None) -> Iterator[str]:  # noqa: A002
    """Yield the SQL statements that recreate the database of ``connection``; with
    ``filter`` (3.13+), only the objects whose name matches that LIKE pattern."""
    writeable_schema = False
    # The audit log of an audited connection is not data: it travels with its proofs
    # through conn.audit.export(), and could not be replayed into an audited database
    # (its authorizer refuses writes to the log).
    skip: set[str] = set()
    if connection.audit is not None:
        skip = {connection.audit.table, "__audit_meta"}
    cu = connection.cursor()
    cu.row_factory = None  # the dump reads plain tuples whatever the connection uses
    if sys.version_info >= (3, 13):
        # As sqlite3 3.13: foreign keys off when the data violates them, so that it loads.
        if cu.execute("PRAGMA foreign_key_check").fetchall():
            yield "PRAGMA foreign_keys=OFF;"
    yield "BEGIN TRANSACTION;"

    if filter:
        filter_name_clause = 'AND "name" LIKE ?'
        params: list = [filter]
    else:
        filter_name_clause = ""
        params = []
    q = f"""
        SELECT "name", "type", "sql"
        FROM "sqlite_master"
            WHERE "sql" NOT NULL AND
            "type" == 'table'
            {filter_name_clause}
            ORDER BY "name"
        """
    schema_res = cu.execute(q, params).fetchall()
    sqlite_sequence = []
    for table_name, _type, sql in schema_res:
        if table_name == "sqlite_sequence":
            rows = cu.execute('SELECT * FROM "sqlite_sequence";').fetchall()
            sqlite_sequence = ['DELETE FROM "sqlite_sequence"']
            sqlite_sequence += [
                f'INSERT INTO "sqlite_sequence" VALUES({_quote_value(name)},{seq})'
                for name, seq in rows
            ]
            continue
        elif table_name == "sqlite_stat1":
            yield 'ANALYZE "sqlite_master";'
        elif table_name.startswith("sqlite_") or table_name in skip:
            continue
        elif sql.startswith("CREATE VIRTUAL TABLE"):
            if not writeable_schema:
                writeable_schema = True
                yield "PRAGMA writable_schema=ON;"
            yield (
                "INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)"
                "VALUES('table',{0},{0},0,{1});".format(
                    _quote_value(table_name), _quote_value(sql))
            )
        else:
            yield f"{sql};"

        # Build the insert statement for each row of the current table.
        table_name_ident = _quote_name(table_name)
        res = cu.execute(f"PRAGMA table_info({table_name_ident})")
        column_names = [str(table_info[1]) for table_info in res.fetchall()]
        q = "SELECT 'INSERT INTO {0} VALUES('{1}')' FROM {0};".format(
            table_name_ident,
            "','".join("||quote({})||".format(_quote_name(col)) for col in column_names),
        )
        query_res = cu.execute(q)
        for row in query_res:
            yield f"{row[0]};"

    # Now when the type is 'index', 'trigger', or 'view'
    q = f"""
        SELECT "name", "type", "sql"
        FROM "sqlite_master"
            WHERE "sql" NOT NULL AND
            "type" IN ('index', 'trigger', 'view')
            {filter_name_clause}
        """
    schema_res = cu.execute(q, params)
    for _name, _type, sql in schema_res.fetchall():
        if skip and _on_skipped_table(connection, _name, _type, skip):
            continue
        yield f"{sql};"

    if writeable_schema:
        yield "PRAGMA writable_schema=OFF;"

    # gh-79009: Yield statements concerning the sqlite_sequence table at the end of the
    # transaction.
    for row in sqlite_sequence:
        yield f"{row};"

    yield "COMMIT;"
