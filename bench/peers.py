"""The peers' own venvs under bench/.venvs/ (gitignored), made by the harness.

SQLite3MultipleCiphers ships as ``apsw-sqlite3mc``, whose module is also named ``apsw``:
installed next to the project's apsw it would replace it, so each peer gets a venv of
its own. The venvs are made with ``--without-pip`` and filled by the project's pip
(``pip --python``), which is quick. A peer that cannot be installed is returned with
the reason (never dropped silently).
"""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENVS = os.path.join(HERE, ".venvs")

# venv name -> (module to import, packages to try in order)
PEERS = {
    "sqlcipher": ("sqlcipher3", ["sqlcipher3", "sqlcipher3-binary"]),
    "sqlite3mc": ("apsw", ["apsw-sqlite3mc"]),
}

# engine name -> venv name
ENGINE_VENV = {"sqlcipher": "sqlcipher", "sqlite3mc": "sqlite3mc", "sqlite3mc-aegis": "sqlite3mc"}


def _python(venv):
    return os.path.join(VENVS, venv, "bin", "python")


def _imports(py, module, extra_check=""):
    code = f"import {module}{extra_check}"
    try:
        r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


def ensure(venv, install=True, log=print):
    """Return (python_path, None, package) if usable, else (None, reason, None)."""
    module, packages = PEERS[venv]
    # apsw in the sqlite3mc venv must really be the sqlite3mc build
    check = "; c=apsw.Connection(':memory:'); c.execute('select sqlite3mc_version()')" \
        if venv == "sqlite3mc" else ""
    py = _python(venv)
    stamp = os.path.join(VENVS, venv, "installed-package.txt")
    if os.path.exists(py):
        ok, _ = _imports(py, module, check)
        if ok:
            pkg = open(stamp).read().strip() if os.path.exists(stamp) else packages[0]
            return py, None, pkg
    if not install:
        return None, "not installed (harness run with --no-install)", None
    os.makedirs(VENVS, exist_ok=True)
    if not os.path.exists(py):
        log(f"  creating {os.path.relpath(os.path.join(VENVS, venv))} ...")
        r = subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                            os.path.join(VENVS, venv)], capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"venv creation failed: {r.stderr.strip()[-300:]}", None
    reasons = []
    for pkg in packages:
        log(f"  pip install {pkg} into bench/.venvs/{venv} ...")
        try:
            r = subprocess.run(
                [sys.executable, "-m", "pip", "--python", py, "install", "-q",
                 "--disable-pip-version-check", "--only-binary=:all:", pkg],
                capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            reasons.append(f"{pkg}: pip timed out")
            continue
        if r.returncode != 0:
            err = [ln for ln in r.stderr.strip().splitlines()
                   if ln.strip() and not ln.startswith("WARNING")]
            reasons.append(f"{pkg}: {(err or ['pip failed'])[-1][:200]}")
            continue
        ok, why = _imports(py, module, check)
        if ok:
            with open(stamp, "w") as fh:
                fh.write(pkg + "\n")
            return py, None, pkg
        reasons.append(f"{pkg} installed but import failed: {why[:200]}")
    return None, "cannot install: " + "; ".join(reasons), None
