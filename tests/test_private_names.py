"""Modules use each other's public names only (issue 22): a name that starts with ``_``
is its module's own business, so that a module can change it without reading the rest of
the package. Checked on the source (``ast``): ``from X import _y`` where ``_y`` is not a
module, in any module of the package, top level or inside a function.
"""
from __future__ import annotations

import ast
import pathlib

import heliosdb

PACKAGE = pathlib.Path(heliosdb.__file__).parent

#: Imports of private names allowed to remain (none: keep it that way, or name the debt
#: here with its issue). A listed import that is gone fails too.
KNOWN: set[tuple[str, str, str]] = set()


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_module(dotted: str, root: pathlib.Path) -> bool:
    parts = dotted.split(".")[1:]  # below the package's own folder
    where = root.joinpath(*parts)
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def private_imports(root: pathlib.Path = PACKAGE) -> set[tuple[str, str, str]]:
    """(importing module, imported module, name) for every private name imported from
    another module of the package (private submodules, such as ``crypto._files``, are
    modules, not names: importing them is how a package shares its internals)."""
    found = set()
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            source = _resolve(module, path.name == "__init__.py", node.level, node.module)
            if not source.startswith("heliosdb"):
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if _is_module(f"{source}.{name}", root):
                    continue  # a private submodule
                found.add((module, source, name))
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    found = private_imports()
    assert sorted(found - KNOWN) == [], "import the public name, or make it public"
    assert sorted(KNOWN - found) == [], "gone: remove it from KNOWN"


def test_the_check_finds_a_private_import(tmp_path: pathlib.Path) -> None:
    """The check can fail: a package made on purpose with one private import."""
    pkg = tmp_path / "heliosdb_fake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("_secret = 1\npublic = 2\n")
    (pkg / "b.py").write_text("from .a import _secret, public\n")
    (pkg / "_files.py").write_text("")
    (pkg / "c.py").write_text("from . import _files\n")  # a private submodule: allowed
    found = private_imports(pkg)
    assert found == {("heliosdb_fake.b", "heliosdb_fake.a", "_secret")}
