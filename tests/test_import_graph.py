"""The drawing of imports: data flows one way (README "Architecture").

import-linter (``make test`` runs ``lint-imports``) checks the layers; this checks what it
cannot say: that no module imports, directly or through others, a module that imports it.
Imports made inside functions count (they are edges too); imports only for type checking
do not.
"""
from __future__ import annotations

import grimp

#: Circles that remain, each a debt named in an issue's closing note; this list may only
#: shrink (a new circle fails the test, and so does a listed one that is gone).
KNOWN_CIRCLES = {
    # merkle.py's proof commands call export / verify / checkpoint, which call back into
    # merkle's tree functions; store.append folds the Merkle frontier.
    frozenset({"heliosdb.audit.checkpoint", "heliosdb.audit.export", "heliosdb.audit.merkle",
               "heliosdb.audit.neighbourhood", "heliosdb.audit.parquet",
               "heliosdb.audit.store", "heliosdb.audit.verify"}),
    # the header format wraps keys; keys derive header fields.
    frozenset({"heliosdb.crypto.format", "heliosdb.crypto.keys"}),
    # dbapi2 re-exports the package face, which imports dbapi2 for its deprecated names.
    frozenset({"heliosdb", "heliosdb.dbapi2"}),
}


def _package_edges() -> dict[str, list[str]]:
    graph = grimp.build_graph("heliosdb", exclude_type_checking_imports=True)
    return {m: sorted(x for x in graph.find_modules_directly_imported_by(m)
                      if x.startswith("heliosdb"))
            for m in graph.modules if m.startswith("heliosdb")}


def _circles(edges: dict[str, list[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_the_execute_path_has_no_circle() -> None:
    """The DB-API, the audit capture and what they share form no circle (issue 18)."""
    execute_path = {"heliosdb.dbapi", "heliosdb.dump", "heliosdb.audit.capture",
                    "heliosdb.statements", "heliosdb.apsw_errors", "heliosdb.errors",
                    "heliosdb.config"}
    for circle in _circles(_package_edges()):
        assert not circle & execute_path, sorted(circle)


def test_no_new_circle_and_none_forgotten() -> None:
    found = _circles(_package_edges())
    assert found - KNOWN_CIRCLES == set(), "new import circle(s)"
    assert KNOWN_CIRCLES - found == set(), "a known circle is gone: remove it from the list"


def test_the_finder_finds_a_circle() -> None:
    """The check can fail: circles made on purpose are found, a chain is not one."""
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["f"], "f": ["e"],
             "g": ["d"]}
    assert _circles(edges) == {frozenset("abc"), frozenset("ef")}


def test_the_positional_event_builder_matches_the_event_fields() -> None:
    """capture's hot path builds EventFields by position: its order is the class's."""
    from heliosdb.audit import capture
    from heliosdb.audit.events import EventFields

    assert capture._STMT_EVENT_ORDER == EventFields._fields
