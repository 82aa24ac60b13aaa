"""Run a test's workers in threads, all at once, and collect what they raised: an
exception in a bare ``threading.Thread`` is only printed, and the test would pass."""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, List, Sequence


def run_threads(target: Callable[..., Any], arg_lists: Iterable[Sequence[Any]]
                ) -> List[Exception]:
    """Start ``target(*args)`` in one thread per ``args`` of ``arg_lists``, wait for them
    all, and return the exceptions they raised (none: an empty list)."""
    errors: List[Exception] = []

    def guarded(*args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=tuple(args)) for args in arg_lists]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
