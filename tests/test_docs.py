"""Docs are tested. docs/THREAT_MODEL.md names, for each guarantee, the tests that try to break it: every
test file and test name it cites must exist (a renamed test would leave the claim
untested). README's "An audited database stays audited" output is what the code prints."""
from __future__ import annotations

import pathlib
import re

from helpers.readme import readme_example, run_example

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _test_names() -> dict[str, set[str]]:
    out = {}
    for f in (ROOT / "tests").glob("test_*.py"):
        out[f.name] = set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    return out


def test_every_cited_test_exists():
    doc = (ROOT / "docs" / "THREAT_MODEL.md").read_text()
    names = _test_names()
    files = set(re.findall(r"(test_\w+\.py)", doc))
    assert files, "the threat model cites no test"
    missing_files = files - set(names)
    assert not missing_files, missing_files
    everything = set().union(*names.values())
    # `test_name_*` cites a family of tests by prefix; file::name cites one test.
    for cited in re.findall(r"`(?:[\w/]*\.py::)?(test_\w+?)(\*?)`", doc):
        name, star = cited
        if name.endswith(".py"):
            continue
        if star:
            assert any(t.startswith(name) for t in everything), name
        else:
            assert name in everything, name


def test_readme_policy_example_output(tmp_path):
    code, printed = readme_example("### An audited database stays audited")
    lines = code.splitlines()
    script = [
        "import heliosdb",
        "key = bytes(range(32))",
        'c = heliosdb.connect("clinic.db", key=key, config="hipaa", audit_user="alice")',
        'c.execute("CREATE TABLE patients(id INTEGER PRIMARY KEY, dx TEXT)")',
        "c.commit(); c.close()",
        lines[0], lines[1],
    ]
    for stmt in lines[2:]:
        stmt = stmt.split("#")[0].strip()
        script += ["try:", f"    {stmt}", "except heliosdb.DatabaseError as exc:",
                   "    print(type(exc).__name__ + ':', exc)"]
    assert run_example("\n".join(script), tmp_path) == printed


def test_readme_actors_example_output(tmp_path):
    code, printed = readme_example("### Actors, reasons and the documented queries")
    assert run_example(code, tmp_path) == printed
