"""SQL text, classified once per distinct text: what the cursor and the audit need to know
of a statement before it runs.

:func:`classify` returns bit flags (:data:`DML`, :data:`MULTI`, :data:`EMPTY`,
:data:`RETURNING`, :data:`TRAILING`, :data:`NAMED`); :class:`StatementCache` keeps them per
SQL text. Nothing here prepares a statement: ``sqlite3_complete`` (``apsw.complete``)
decides where a statement ends, as it does for sqlite3's own checks. Both the DB-API
cursor (:mod:`heliosdb.dbapi`) and the audit capture (:mod:`heliosdb.audit.capture`) read
these flags, so that they agree on what a statement is.
"""
from __future__ import annotations

import functools
import sys

import apsw

__all__ = ["DML", "MULTI", "EMPTY", "RETURNING", "TRAILING", "NAMED", "WARN_NAMED_SEQUENCE",
           "classify", "first_statement", "split_statements", "skip_space_and_comments",
           "skip_empty_statements", "named_parameters", "StatementCache"]

DML = 1  # INSERT / UPDATE / DELETE / REPLACE: implicit BEGIN, rowcount counted
MULTI = 2  # more than one statement in the text
EMPTY = 4  # only whitespace and comments
RETURNING = 8  # DML with a RETURNING clause: yields rows
TRAILING = 16  # only space and comments after the statement's ';': run without them
NAMED = 32  # 3.12+: has named parameters (bound from a sequence: a DeprecationWarning)
ATTACH = 64  # ATTACH: a connection without audit checks what it attached (dbapi)
WARN_NAMED_SEQUENCE = sys.version_info >= (3, 12)
#: sqlite3 of CPython 3.12.0-3.12.3 also takes a numbered parameter (?NNN, named "?NNN" by
#: SQLite) as a named one and warns for it; 3.12.4 and 3.13 do not (CPython gh-117995).
NUMBERED_ARE_NAMED = (3, 12) <= sys.version_info < (3, 12, 4)
_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


def named_parameters(sql: str, numbered: bool = False) -> list:
    """[(index, name)] of the named parameters (:a, @a, $a) in ``sql``, numbered as
    SQLite numbers parameters; quotes, identifiers and comments are skipped. With
    ``numbered``, ?NNN parameters too (named "?NNN", at index NNN), in index order."""
    out: list = []
    seen: dict = {}
    top = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = sql.find(close, i + 1)
            while j >= 0 and close != "]" and sql.startswith(close * 2, j):
                j = sql.find(close, j + 2)  # a doubled quote is part of the text
            i = n if j < 0 else j + 1
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            i = skip_space_and_comments(sql, i)
        elif ch == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            if j > i + 1:
                num = int(sql[i + 1:j])
                top = max(top, num)
                if numbered and sql[i:j] not in seen and num not in seen.values():
                    seen[sql[i:j]] = num
                    out.append((num, sql[i:j]))
            else:
                top += 1
            i = j
        elif ch in ":@$" and i + 1 < n and sql[i + 1] in _IDENT and \
                (i == 0 or sql[i - 1] not in _IDENT):
            j = i + 1
            while j < n and (sql[j] in _IDENT or ord(sql[j]) > 127):
                j += 1
            name = sql[i:j]
            if name not in seen:
                top += 1
                seen[name] = top
                out.append((top, name))
            i = j
        else:
            i += 1
    return sorted(out) if numbered else out


def skip_space_and_comments(sql: str, i: int = 0) -> int:
    """The index of the first character at or after ``i`` that is not space or a comment."""
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in " \t\n\r\f\v":
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return i


def skip_empty_statements(sql: str, i: int = 0) -> int:
    """Like :func:`skip_space_and_comments`, also skipping empty statements (';')."""
    # SQLite's parser skips empty statements (';' alone): "; begin" is BEGIN.
    i = skip_space_and_comments(sql, i)
    while i < len(sql) and sql[i] == ";":
        i = skip_space_and_comments(sql, i + 1)
    return i


def classify(sql: str) -> int:
    """The flags of ``sql`` (what its first statement is, and what follows it)."""
    flags = 0
    start = skip_empty_statements(sql, 0)
    if start >= len(sql):
        return EMPTY
    head = sql[start:start + 7].upper()
    if head.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")):
        flags |= DML
        if "RETURNING" in sql.upper():
            flags |= RETURNING
    elif head.startswith("ATTACH"):
        flags |= ATTACH
    # Find the end of the first statement: the first ';' at which the prefix is complete
    # (sqlite3_complete understands quotes, comments and trigger bodies).
    pos = sql.find(";", start)
    while pos >= 0:
        if apsw.complete(sql[: pos + 1]):
            # After it, sqlite3 allows only space and comments (not another ';').
            if skip_space_and_comments(sql, pos + 1) < len(sql):
                flags |= MULTI
            elif pos + 1 < len(sql):
                flags |= TRAILING
            break
        pos = sql.find(";", pos + 1)
    if WARN_NAMED_SEQUENCE and (":" in sql or "@" in sql or "$" in sql
                                or NUMBERED_ARE_NAMED and "?" in sql) \
            and named_parameters(sql, NUMBERED_ARE_NAMED):
        flags |= NAMED
    return flags


@functools.lru_cache(maxsize=256)  # SQL written as '...;\n' takes this path every time
def first_statement(sql: str) -> str:
    """``sql`` up to the ';' that completes its one statement (the rest is space and
    comments, which sqlite3 ignores; an unclosed '/*' there would not compile)."""
    pos = sql.find(";", skip_empty_statements(sql, 0))
    while not apsw.complete(sql[: pos + 1]):
        pos = sql.find(";", pos + 1)
    return sql[: pos + 1]


def split_statements(script: str) -> list[str]:
    """Split SQL text into complete statements without preparing them.

    Semicolons inside strings, identifiers, comments and trigger bodies do not split
    (``sqlite3_complete`` decides); an incomplete tail is kept as the last piece; pieces
    holding only space, comments and semicolons are dropped. Each piece keeps its own
    leading whitespace (sqlite3's trace callback shows it).
    """
    out = []
    start = 0
    pos = script.find(";")
    while pos >= 0:
        if apsw.complete(script[start:pos + 1]):
            out.append(script[start:pos + 1])
            start = pos + 1
        pos = script.find(";", pos + 1)
    out.append(script[start:])
    return [s for s in out if s[skip_space_and_comments(s, 0):].strip(" \t\r\n;")]


class StatementCache:
    """Classification results per SQL text, bounded (cleared wholesale when full).

    ``data`` is read directly on the hot path; ``flags`` fills it on a miss.
    """

    __slots__ = ("_data", "_max")

    def __init__(self, size: int) -> None:
        self._data: dict[str, int] = {}
        self._max = max(64, size * 4)

    @property
    def data(self) -> dict[str, int]:
        """The cache itself: SQL text -> flags (read directly on the hot path)."""
        return self._data

    def flags(self, sql: str) -> int:
        """The flags of ``sql``, classified on a miss."""
        f = self._data.get(sql)
        if f is None:
            f = classify(sql)
            if len(self._data) >= self._max:
                self._data.clear()
            self._data[sql] = f
        return f
