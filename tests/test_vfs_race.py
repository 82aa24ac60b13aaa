"""Race check of the C VFS shim (csrc/vfs.c): a multi-threaded workload on encrypted
databases (tests/stress/vfs_race_workload.py) runs under valgrind's helgrind, and any
data race helgrind reports in heliosdb's own C code fails the test.

Reports inside CPython, APSW's SQLite, OpenSSL and the C library are suppressed by
tests/stress/helgrind.supp (matched on their top frames only). The helgrind run is
marked slow (helgrind runs the workload 50 to 100 times slower): `make stress` runs it,
`make test` runs only the check of the log reader. It caught the unlocked writes of a registry entry's page size and page count
(read by heliosdb_key_info under g_keys_mu) before they were made under the mutex.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from heliosdb import native

ROOT = Path(__file__).resolve().parent.parent
STRESS = ROOT / "tests" / "stress"
CSRC_FILES = {p.name for p in (ROOT / "csrc").glob("*.c")}


_FRAME = re.compile(r"\((?P<file>[\w.]+\.c):(?P<line>\d+)\)")
# A frame of the module without line information (a build without -g) names the object.
_NATIVE_OBJECT = re.compile(r"\(in \S*/heliosdb/_native[^)]*\)")


def _is_own_code(stack: str) -> bool:
    """Does this stack have a frame in csrc/*.c (or, without debug info, in the module)?"""
    return (any(m.group("file") in CSRC_FILES for m in _FRAME.finditer(stack))
            or _NATIVE_OBJECT.search(stack) is not None)


def races_in_own_code(log: str) -> List[str]:
    """Helgrind's race reports whose racing access has a frame in csrc/*.c.

    A report is the text between two separator lines: where the locks it names were
    first seen, then "Possible data race" and the stack of the access helgrind caught,
    then "This conflicts with" and stacks that only bound the other access.
    """
    found = []
    for report in re.split(r"^==\d+== -{20,}$", log, flags=re.M):
        start = report.find("Possible data race")
        if start < 0:
            continue
        access = report[start:].split("This conflicts with", 1)[0]
        if _is_own_code(access):
            found.append(report.strip())
    return found


def test_races_in_own_code_reads_helgrind_reports():
    """The log reader finds a report in csrc/*.c, and one in the module built without line
    information, and ignores one elsewhere (the check below is only as good as this)."""
    sep = "==1== ----------------------------------------------------------------"
    lock = ("==1==  Lock at 0x7 was first observed\n"
            "==1==    at 0x8: heliosdb_key_register (vfs.c:214)\n")
    ours = ("==1== Possible data race during write of size 4 at 0x1 by thread #3\n"
            "==1==    at 0x2: main_write (vfs.c:592)\n"
            "==1==  This conflicts with a previous read of size 4 by thread #2\n"
            "==1==    at 0x3: create_gil (ceval_gil.h:107)\n")
    theirs = (lock + "==1== Possible data race during read of size 4 at 0x4 by thread #2\n"
              "==1==    at 0x5: drop_gil (ceval_gil.h:169)\n"
              "==1==  This conflicts with a previous write of size 4 by thread #3\n"
              "==1==    at 0x6: main_write (vfs.c:592)\n")
    stripped = ("==1== Possible data race during read of size 8 at 0x9 by thread #4\n"
                "==1==    at 0xA: ??? (in /venv/site-packages/heliosdb/_native.abi3.so)\n")
    log = "\n".join([sep, ours, sep, theirs, sep, stripped, sep])
    assert [r.splitlines()[1] for r in races_in_own_code(log)] == [
        "==1==    at 0x2: main_write (vfs.c:592)",
        "==1==    at 0xA: ??? (in /venv/site-packages/heliosdb/_native.abi3.so)"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind is not installed (apt-get install valgrind)")
@pytest.mark.skipif(not native.available(), reason="the native extension is not built")
@pytest.mark.timeout(3600)  # a hang guard only: helgrind is slow on a loaded machine
def test_no_data_race_in_the_vfs_shim_under_helgrind(tmp_path):
    """Writers on two encrypted files (WAL and rollback journal, two connections each)
    while another thread reads the key registry: helgrind reports no race in csrc/."""
    log = tmp_path / "helgrind.log"
    env = dict(os.environ, PYTHONMALLOC="malloc")  # pymalloc's reuse reads as races
    cmd = ["valgrind", "--tool=helgrind", "--history-level=approx",
           f"--suppressions={STRESS / 'helgrind.supp'}", f"--log-file={log}",
           sys.executable, str(STRESS / "vfs_race_workload.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3500)
    text = log.read_text()
    assert proc.returncode == 0, f"the workload failed under helgrind:\n{proc.stderr}"
    assert "ERROR SUMMARY" in text, "helgrind did not finish its log"
    counts = dict(re.findall(r"(page_\w+)=(\d+)", proc.stdout))
    assert int(counts.get("page_encryptions", 0)) > 0, proc.stdout  # the shim did run
    assert int(counts.get("page_decryptions", 0)) > 0, proc.stdout
    races = races_in_own_code(text)
    assert not races, (f"helgrind reports {len(races)} data race(s) in csrc/ "
                       f"(full log: {log}):\n\n" + "\n\n".join(races[:5]))
