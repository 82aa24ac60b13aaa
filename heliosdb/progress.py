"""Progress reporting for long operations: a rich bar on a terminal, silence elsewhere.

Long work (key rotation, encrypting or decrypting a file, verifying a large audit log,
exports) takes a ``progress`` callback. :func:`progress_callback` builds one::

    from heliosdb.progress import progress_callback

    with progress_callback(total=None, description="Rotating key") as progress:
        heliosdb.rotate_key(path, key, progress=progress)

The callback is called as ``progress(done)`` or ``progress(done, total)``; ``total`` may be
unknown when the bar is created and given (or corrected) by any later call. The bar is drawn
on standard error only when standard error is a terminal, so piped and redirected output,
logs and CI stay clean; otherwise every call is a cheap no-op. The bar is removed when the
work ends (``close()`` or leaving the ``with`` block) and never writes to standard output.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional, TextIO

__all__ = ["Progress", "progress_callback", "stream_is_terminal"]


def stream_is_terminal(stream: Optional[TextIO]) -> bool:
    """True if ``stream`` is an interactive terminal (and ``TERM`` is not ``dumb``)."""
    if stream is None:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        if not (isatty and isatty()):
            return False
    except (ValueError, OSError):  # closed or detached stream
        return False
    return os.environ.get("TERM", "") != "dumb"


class Progress:
    """A progress callback: call it with the work done so far (and the total, if known).

    Build it with :func:`progress_callback`. It is a context manager; leaving the block
    (or calling :meth:`close`) removes the bar. Counts are expected to grow; a smaller
    count than the last one is ignored, so a callback shared by several phases never
    makes the bar go backwards. ``done`` and ``total`` read the last values seen, also
    when nothing is drawn.
    """

    def __init__(self, total: Optional[int], description: str, *,
                 stream: Optional[TextIO] = None, enabled: Optional[bool] = None) -> None:
        self.description = description
        self.total: Optional[int] = int(total) if total is not None else None
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = stream_is_terminal(self._stream) if enabled is None else bool(enabled)
        self._bar: Any = None
        self._task: Any = None
        self._closed = False

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                   SpinnerColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        console = Console(file=self._stream, force_terminal=True)
        self._bar = RichProgress(
            SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
            BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total)

    def __call__(self, done: int, total: Optional[int] = None, *_: Any) -> None:
        """Record that ``done`` units of ``total`` are finished (``total`` optional)."""
        if total is not None:
            self.total = int(total)
        done = int(done)
        if done > self.done:
            self.done = done
        if not self.enabled or self._closed:
            return
        if self._bar is None:
            self._start()
        self._bar.update(self._task, completed=self.done, total=self.total)

    def close(self) -> None:
        """Finish: remove the bar from the terminal. Further calls are ignored."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            try:
                self._bar.stop()
            finally:
                self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_callback(total: Optional[int] = None, description: str = "Working", *,
                      stream: Optional[TextIO] = None,
                      enabled: Optional[bool] = None) -> Progress:
    """A :class:`Progress` callback for ``total`` units of work named ``description``.

    Drawn on ``stream`` (standard error by default) only if it is a terminal, unless
    ``enabled`` forces it on or off. ``total`` may be ``None`` and given later by the
    callback's second argument.
    """
    return Progress(total, description, stream=stream, enabled=enabled)
