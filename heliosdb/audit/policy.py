"""The audit policy stored in the database: an audited database stays audited.

Every audited connection records its audit configuration in ``__audit_meta`` (per audit
table: ``config`` and ``config_hash``; for the file: ``('*', 'policy_table')``, the table
whose configuration is the policy in force). Every later HeliosDB connection to the file,
whatever its ``config=``, runs under *at least* that policy (:func:`enforce`):

* no ``config=`` (or one with ``audit.enabled = false``) on an audited database: audited
  with the stored policy;
* a config that asks for less (``log_dml = false``, a shorter retention, another
  ``table_name``...): each key takes the stricter of the two values; the session's first
  event says which requested keys were overridden;
* a config that asks for more: it wins, and the change is recorded as an
  ``AUDIT_CONFIG_CHANGE`` event (as before).

Relaxing the stored policy, switching audit off or moving to another table is an explicit,
audited call (``conn.audit.change_policy(...)``); a policy with mandatory checksums cannot be
relaxed at all. This module is data only: it reads meta rows and merges configurations.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
from typing import Any, Callable, Optional

import apsw

from ..config import Config
from ..errors import ConfigError
from .neighbourhood import recorded_in
from .store import DEFAULT_TABLE, META_TABLE

__all__ = ["POLICY_ROW", "StoredPolicy", "read_meta", "read_stored_policy", "enforce",
           "relaxations"]

#: ``__audit_meta`` row (tbl, key) naming the audit table whose config is in force.
POLICY_ROW = ("*", "policy_table")

# Integer keys of [audit]: which direction is stricter. ``max_query_length`` 0 means "no
# limit" (the strictest); ``async_buffer_size`` smaller loses fewer SELECT events in a crash.
_INT_STRICTER = {
    "retention_days": max,
    "archive_days": min,
    "async_buffer_size": min,
}


@dataclasses.dataclass(frozen=True)
class StoredPolicy:
    """The policy recorded in a database: the audit table and its ``[audit]`` section."""

    table: str
    audit: dict
    enabled: bool
    #: The whole recorded config (``name``, ``audit``, ``encryption``), or ``{}``.
    config: dict = dataclasses.field(default_factory=dict)
    #: The recorded config's JSON text as read (what ``audit`` and ``config`` were parsed
    #: from), or None: :func:`enforce` keys its cache on it.
    text: Optional[str] = dataclasses.field(default=None, compare=False)


def read_meta(db: apsw.Connection) -> Optional[dict]:
    """Every row of ``__audit_meta`` as ``{(tbl, key): value}``, or ``None`` for a database
    without a meta table (never audited). One statement: what an audited open asks of
    the meta table (the policy, the recorded tables, whether the log's schema is
    complete, the config hash, the policy pointer, the last auto-purge) is answered from
    it. A snapshot of the file, untrusted like every value read from it: the writes it
    leads to re-read what they depend on inside their own transaction.

    Whether the meta table exists is asked of SQLite's schema first
    (``sqlite3_table_column_metadata``: it loads the schema from the file as the query
    would, raises what loading it raises, and is answered without compiling SQL): a plain
    database then costs no failing statement (about 30,000 instructions per open, W7).
    The SELECT still runs whenever the table is there. (A *view* named ``__audit_meta``,
    which HeliosDB never creates, is not read.)
    """
    try:
        if not db.table_exists(None, META_TABLE):  # None: where the SELECT would look
            return None
    except apsw.SQLError:
        return None  # as the SELECT below
    try:
        rows = db.execute(f"SELECT tbl, key, value FROM {META_TABLE}").fetchall()
    except apsw.SQLError:
        return None  # no meta table: not an audited database (or not yet)
    # (tbl, key) is the table's primary key; in a table made by another tool, the last of
    # several rows answers. SQLite's values are all hashable.
    return {(t, k): v for t, k, v in rows}


def read_stored_policy(db: apsw.Connection, *,
                       meta: Optional[dict] = None) -> Optional[StoredPolicy]:
    """The policy stored in the file, or ``None`` for a database never audited.

    Files written before the policy row existed: the table whose config was recorded
    (``__audit_log`` first when several were). ``meta``: what :func:`read_meta` just
    returned (else it is read here: one query, none for a database without a meta table,
    which every plain connection is).
    """
    if meta is None:
        meta = read_meta(db)
        if meta is None:
            return None
    table = meta.get(POLICY_ROW)
    if not isinstance(table, str):
        table = None
    if table is None:
        tables = recorded_in(meta)
        if not tables:
            return None
        configs = {t for (t, k) in meta if k == "config"}
        with_config = sorted(t for t in tables if t in configs)
        if DEFAULT_TABLE in tables:
            table = DEFAULT_TABLE
        elif with_config:
            table = with_config[0]
        else:
            table = tables[0]
    text = meta.get((table, "config")) if table != POLICY_ROW[0] else None
    if not isinstance(text, str):
        text = None
    audit, whole = _parsed(text)
    # A table with a log but no recorded config (written by an older release): audited
    # with the defaults of the [audit] section.
    enabled = bool(audit.get("enabled", True))
    return StoredPolicy(table=table, audit=audit, enabled=enabled, config=whole, text=text)


#: _parsed()'s answers, per recorded config text (every audited open reads the same text;
#: parsing it cost about 80,000 instructions). A pure function of the text; bounded.
_PARSED: dict = {}
_PARSED_MAX_TEXT = 1 << 16  # a larger text (none HeliosDB writes is) is parsed each time


def _parsed(text: Optional[str]) -> tuple[Any, Any]:
    """``(audit, whole)`` of a recorded config text: its ``[audit]`` section and the whole
    config, or two empty mappings when the text is absent, not JSON, or has no ``audit``
    object. Read-only views (``types.MappingProxyType``): the objects are shared by every
    read of the same text, so nothing that reads a policy may change them."""
    if text is None:
        return _EMPTY, _EMPTY
    hit = _PARSED.get(text)
    if hit is not None:
        return hit
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("audit"), dict):
        data["audit"] = types.MappingProxyType(data["audit"])
        out = (data["audit"], types.MappingProxyType(data))
    else:
        out = (_EMPTY, _EMPTY)
    if len(text) <= _PARSED_MAX_TEXT:
        if len(_PARSED) >= 64:
            _PARSED.clear()
        _PARSED[text] = out
    return out


_EMPTY: Any = types.MappingProxyType({})


def _stricter(name: str, want: Any, have: Any, default: Any) -> Any:
    """The stricter of a requested value ``want`` and the stored value ``have``."""
    if isinstance(default, bool):
        return bool(want) or bool(have)
    if name == "max_query_length":
        if not want or not have:
            return 0
        return max(want, have)
    if name in _INT_STRICTER and isinstance(want, int) and isinstance(have, int):
        return _INT_STRICTER[name](want, have)
    if name == "retention_overrides":
        out = dict(want or {})
        for k, v in (have or {}).items():
            out[k] = max(out.get(k, v), v)
        return out
    if isinstance(default, (tuple, list)):
        out_list = list(want or ())
        out_list += [v for v in (have or ()) if v not in out_list]
        return out_list
    if isinstance(default, dict):
        return {k: _stricter(k, (want or {}).get(k, dv), (have or {}).get(k, dv), dv)
                for k, dv in default.items()}
    return want if want != default else have


#: enforce()'s answers (per_config: the requested config, the table, the recorded JSON
#: text). Every audited open asks, with the config object load_config() keeps for
#: a file or preset and the same stored text; the merge (two to_dict() of the config, a
#: deep copy of the defaults, a validated replace()) cost more than the rest of the
#: policy read. A pure function of its inputs: a changed policy is another text, hence
#: another key. Bounded: cleared when full.
_ENFORCED: dict = {}


def per_config(cache: dict, config: Any, extra: tuple, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered in ``cache`` for the config object ``config`` (configs
    are immutable) and the hashable ``extra``. Keyed by ``id(config)``; the entry holds
    the object too, so that an id reused by another object never answers. Bounded: the
    cache is cleared when it holds 64 entries."""
    key = (id(config),) + extra
    hit = cache.get(key)
    if hit is None or hit[0] is not config:
        if len(cache) >= 64:
            cache.clear()
        hit = cache[key] = (config, compute())
    return hit[1]


def enforce(requested: Config, stored: Optional[StoredPolicy]) -> tuple[Config, dict]:
    """The config a connection runs under: ``requested``, raised to at least ``stored``.

    Returns ``(config, overridden)`` where ``overridden`` maps each dotted ``audit.*`` key
    whose requested value was replaced by the stored policy to ``{"requested", "enforced"}``.
    """
    if stored is None or not stored.enabled:
        return requested, {}
    if stored.text is None:  # not read from a file by read_stored_policy: not cached
        return _enforce(requested, stored)
    config, overridden = per_config(_ENFORCED, requested, (stored.table, stored.text),
                                    lambda: _enforce(requested, stored))
    # (Configs are immutable; the caller gets its own copy of the overrides.)
    return config, copy.deepcopy(overridden) if overridden else {}


def _enforce(requested: Config, stored: StoredPolicy) -> tuple[Config, dict]:
    defaults = _default_audit_dict()
    want = _audit_dict(requested) if requested.audit.enabled else dict(defaults)
    have = {**defaults, **stored.audit}
    merged: dict = {}
    for key, dv in defaults.items():
        if key in ("enabled", "table_name", "after_hours"):
            continue
        if requested.audit.enabled:
            merged[key] = _stricter(key, want.get(key, dv), have.get(key, dv), dv)
        else:  # nothing asked for: exactly the stored policy
            merged[key] = have.get(key, dv)
    merged["enabled"] = True
    merged["table_name"] = stored.table
    merged["after_hours"] = want["after_hours"] if requested.audit.enabled else \
        have.get("after_hours", defaults["after_hours"])
    if merged.get("checksums_mandatory"):
        merged["enable_checksums"] = True
    overridden: dict = {}
    if requested.audit.enabled:
        for key in merged:
            if _norm(merged[key]) != _norm(want.get(key)):
                overridden[f"audit.{key}"] = {"requested": _norm(want.get(key)),
                                              "enforced": _norm(merged[key])}
    else:
        overridden["audit.enabled"] = {"requested": False, "enforced": True}
    base = requested
    if requested.audit.enabled and not overridden and _norm(merged) == _norm(want):
        # What most connections see: the file's policy is what was asked for. (Building
        # the config again would validate every section for nothing.)
        return requested, overridden
    if not requested.audit.enabled and stored.config:
        # No audit asked for: the session runs as the stored config says (its name and
        # encryption section too, so that it records no spurious config change).
        try:
            base = requested.replace(name=stored.config.get("name") or requested.name,
                                     encryption=stored.config.get("encryption") or {})
        except ConfigError:  # a stored section this release cannot read
            base = requested
    return base.replace(audit=merged), overridden


@functools.lru_cache(maxsize=1)
def _defaults() -> dict:
    return _audit_dict(Config())


def _default_audit_dict() -> dict:
    """The default ``[audit]`` section as plain JSON types (a fresh copy each call)."""
    return copy.deepcopy(_defaults())


def _audit_dict(config: Config) -> dict:
    """The ``[audit]`` section as plain JSON types (what ``__audit_meta`` stores)."""
    return config.to_dict()["audit"]


_SCALARS = (str, int, float, bool, type(None))


def _norm(v: Any) -> Any:
    if v.__class__ in _SCALARS:  # most values: no dataclass check (read at every open)
        return v
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _norm(dataclasses.asdict(v))
    return v


def relaxations(old: Config, new: Config) -> list[str]:
    """Dotted ``audit.*`` keys in which ``new`` asks for less than ``old`` (empty: it
    relaxes nothing)."""
    a, b = _audit_dict(old), _audit_dict(new)
    out = []
    if a["enabled"] and not b["enabled"]:
        return ["audit.enabled"]
    if a["table_name"] != b["table_name"]:
        out.append("audit.table_name")
    defaults = _default_audit_dict()
    for key, dv in defaults.items():
        if key in ("enabled", "table_name", "after_hours"):
            continue
        if _norm(_stricter(key, b[key], a[key], dv)) != _norm(b[key]):
            out.append(f"audit.{key}")
    return out
