"""Run Python in a fresh interpreter of this venv, as the subprocess tests do."""
from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, *args: str, env: dict | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter; return the CompletedProcess (text).

    ``env`` adds to (or, with a value of None, removes from) this process's environment.
    """
    full_env = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
