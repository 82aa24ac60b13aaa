"""CPython's own sqlite3 tests, run against heliosdb (issue 17).

The tests come from the running interpreter's standard library (``test/test_sqlite3`` on
3.11+, ``sqlite3/test`` on 3.10); they are not copied into this repository. A temporary copy is made with only its
``import sqlite3`` lines rewritten to import heliosdb, and both the original (stdlib sqlite3)
and the copy (heliosdb) run in fresh interpreters (driver.py). Every test that passes with
the stdlib must pass with heliosdb, or be listed in known_differences.txt with a one-line
justification; a listed test that passes is reported too, so the list only shrinks.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import summary

HERE = Path(__file__).resolve().parent
KNOWN = HERE / "known_differences.txt"
TIMEOUT = 900

# `import sqlite3`, `import sqlite3 as x`, at any indentation (some tests build scripts).
_IMPORT = re.compile(r"^(?P<indent>\s*)import sqlite3(?P<alias> as \w+)?\s*$")


# Where the package lives: (parent package, directory name). driver.py puts the rewritten
# copy's directory first on the parent's __path__, so test ids are the same in both runs.
_PACKAGE = ("sqlite3", "test") if sys.version_info < (3, 11) else ("test", "test_sqlite3")


def _test_package_dir() -> Path | None:
    parent, name = _PACKAGE
    spec = importlib.util.find_spec(parent)
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        cand = Path(base) / name
        if (cand / "__init__.py").is_file():
            return cand
    return None


def rewrite_line(line: str) -> str:
    m = _IMPORT.match(line.rstrip("\n"))
    if not m:
        return line
    alias = m.group("alias") or " as sqlite3"
    return f"{m.group('indent')}import heliosdb{alias}\n"


def make_copy(src: Path, dst: Path) -> int:
    """Copy the package to dst/<its directory name> rewriting only `import sqlite3` lines."""
    target = dst / src.name
    target.mkdir(parents=True)
    changed = 0
    for f in sorted(src.glob("*.py")):
        out = []
        for line in f.read_text().splitlines(keepends=True):
            new = rewrite_line(line)
            changed += new != line
            out.append(new)
        (target / f.name).write_text("".join(out))
    return changed


def run_suite(module: str, workdir: Path, copy_dir: Path | None = None) -> dict[str, dict]:
    out = workdir / f"{module}.jsonl"
    cmd = [sys.executable, str(HERE / "driver.py"), module, str(out)]
    if copy_dir is not None:
        cmd.append(str(copy_dir))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    run_dir = workdir / f"cwd-{module}"
    run_dir.mkdir()
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    results: dict[str, dict] = {}
    rank = {"start": 0, "pass": 1, "skip": 1, "xfail": 1, "xpass": 2, "fail": 3, "error": 3}
    ended = False
    for line in out.read_text().splitlines() if out.exists() else []:
        rec = json.loads(line)
        if rec["outcome"] == "end":
            ended = True
            continue
        prev = results.get(rec["id"])
        if prev is None or rank[rec["outcome"]] >= rank[prev["outcome"]]:
            results[rec["id"]] = rec
    if not ended:
        # The interpreter died: the test that started and never finished is the culprit.
        for rec in results.values():
            if rec["outcome"] == "start":
                rec["outcome"] = "crash"
                rec["detail"] = f"exit {proc.returncode}: {proc.stderr[-1500:]}"
        results.setdefault("<run>", {"id": "<run>", "outcome": "crash",
                                     "detail": f"exit {proc.returncode}: {proc.stderr[-3000:]}"})
    return results


def load_known() -> dict[str, str]:
    """`<test id> | <justification>` per line; `#` starts a comment line. An id may be
    prefixed with `[3.12]` (or `[3.12,3.13]`) when it applies to those versions only."""
    known: dict[str, str] = {}
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for n, line in enumerate(KNOWN.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test_id, sep, why = (p.strip() for p in line.partition("|"))
        assert sep and why, f"{KNOWN.name}:{n}: every entry needs `| justification`"
        m = re.match(r"\[([\d.,]+)\]\s*(\S+)$", test_id)
        if m:
            if here not in m.group(1).split(","):
                continue
            test_id = m.group(2)
        assert test_id not in known, f"{KNOWN.name}:{n}: {test_id} listed twice"
        known[test_id] = why
    return known


def test_rewrite_touches_only_sqlite3_imports():
    assert rewrite_line("import sqlite3 as sqlite\n") == "import heliosdb as sqlite\n"
    assert rewrite_line("            import sqlite3\n") == "            import heliosdb as sqlite3\n"
    for keep in ("import sqlite3x\n", "from sqlite3 import dbapi2\n", "x = 'import sqlite3'\n",
                 "import_helper.import_module('_sqlite3')\n"):
        assert rewrite_line(keep) == keep


def test_cpython_sqlite3_suite(tmp_path, pytestconfig):
    src = _test_package_dir()
    if src is None:
        pytest.skip(f"CPython's sqlite3 tests ({'.'.join(_PACKAGE)}) are not installed with "
                    f"this Python ({sys.version.split()[0]})")
    copy_root = tmp_path / "copy"
    assert make_copy(src, copy_root) >= 9  # one import per module at least
    stdlib = run_suite("sqlite3", tmp_path)
    helios = run_suite("heliosdb", tmp_path, copy_root)
    assert "<run>" not in stdlib, stdlib["<run>"]["detail"]
    passed = {t for t, r in stdlib.items() if r["outcome"] == "pass"}
    assert len(passed) > 300, f"only {len(passed)} stdlib passes: the runner is broken"
    known = load_known()

    crashes = [t for t, r in helios.items() if r["outcome"] == "crash"]
    missing = sorted(t for t in passed if helios.get(t, {}).get("outcome") != "pass"
                     and t not in known)
    stale = sorted(t for t in known if t in passed and helios.get(t, {}).get("outcome") == "pass")
    ok = sum(1 for t in passed if helios.get(t, {}).get("outcome") == "pass")
    counts = (f"CPython {sys.version.split()[0]} {'.'.join(_PACKAGE)}: stdlib passes "
              f"{len(passed)}, heliosdb passes {ok} of them; {len(known)} listed as known "
              f"differences")
    print("\n" + counts)
    summary.add(pytestconfig, counts)
    report = []
    for t in crashes + missing:
        r = helios.get(t, {"outcome": "missing", "detail": ""})
        report.append(f"--- {t}: {r['outcome']}\n{r.get('detail', '')[-800:]}")
    assert not crashes, "heliosdb crashed:\n" + "\n".join(report)
    assert not missing, (f"{len(missing)} tests pass with sqlite3 but not with heliosdb and "
                         f"are not in {KNOWN.name}:\n" + "\n".join(report))
    assert not stale, f"listed in {KNOWN.name} but pass now (remove them): {stale}"
