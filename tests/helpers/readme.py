"""README.md's examples, as the docs tests check them: a code block under a heading and
the block after it that shows what the code prints."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import TESTS_DIR

README = Path(TESTS_DIR).parent / "README.md"


def readme_example(heading: str) -> tuple[str, str]:
    """(code, printed): the first two code blocks after ``heading`` in README.md."""
    section = README.read_text().split(heading, 1)[1]
    code, printed = re.findall(r"```(?:python)?\n(.*?)```", section, re.S)[:2]
    return code, printed


def run_example(code: str, cwd: Path) -> str:
    """What ``code`` prints, run in a fresh interpreter in ``cwd``; it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
