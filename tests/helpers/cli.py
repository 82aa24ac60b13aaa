"""Helpers for the command-line tests: run ``heliosdb`` in a subprocess, or under a pty.

Every run gets its own HOME (so the shell's history file is the test's), NO_COLOR, and a
new session without a controlling terminal (``start_new_session``), so that nothing can
prompt on the terminal pytest runs in: a test that would prompt fails fast instead.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Optional, Sequence

HELIOSDB = [sys.executable, "-m", "heliosdb"]
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def cli_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOSDB_")}
    env.update(HOME=str(home), NO_COLOR="1", TERM="dumb", COLUMNS="100")
    env.update(extra)
    return env


def run_cli(args: Sequence[str], *, cwd: Path, input: Optional[str] = None,
            env: Optional[dict] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``heliosdb ARGS`` with stdin = ``input`` (or /dev/null); text output captured."""
    return subprocess.run(
        [*HELIOSDB, *args], cwd=str(cwd), input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, text=True, env=env or cli_env(cwd), timeout=timeout,
        start_new_session=True)


def run_many(commands: Sequence[Sequence[str]], *, cwd: Path,
             env: Optional[dict] = None) -> list:
    """Run independent ``heliosdb`` commands side by side (stdin /dev/null); their results
    in order. Only for commands that do not touch the same files."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: run_cli(args, cwd=cwd, env=env), commands))


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The run failed with ``code`` and one line on stderr, without a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # argparse prints its usage line before the error line: the error itself is one line.
    lines = [ln for ln in lines if not ln.startswith("usage:") and not ln.startswith(" ")]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


class Pty:
    """A child process on a pseudo-terminal (its controlling terminal), driven by expect."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child
            try:
                os.chdir(str(cwd))
                os.execve(argv[0], list(argv), env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        # A terminal of 30 rows and 100 columns, as a person would have.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.transcript = b""
        self._buf = b""

    def expect(self, text: str, timeout: float = 30) -> str:
        """Read until ``text`` appears (ANSI escapes removed); return what came before it.

        ``timeout`` only keeps a broken run from hanging the suite.
        """
        want = text.encode()
        deadline = time.monotonic() + timeout
        while want not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"did not see {text!r}; got {self._buf!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                data = b""
            if not data:
                raise AssertionError(f"EOF before {text!r}; got {self._buf!r}")
            self.transcript += data
            self._buf += data
            self._buf = _ANSI.sub(b"", self._buf)
        i = self._buf.index(want)
        before, self._buf = self._buf[:i], self._buf[i + len(want):]
        return before.decode("utf-8", "replace")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        """Drain the output until the child exits; its exit status."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                raise AssertionError("the child did not exit")
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                self.transcript += data
        try:
            while True:
                data = os.read(self.fd, 4096)
                if not data:
                    break
                self.transcript += data
        except OSError:
            pass
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    @property
    def text(self) -> str:
        return _ANSI.sub(b"", self.transcript).decode("utf-8", "replace")
