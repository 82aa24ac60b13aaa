"""Where a plaintext marker could leak to: the files below some directories, and which of
them hold a marker. Shared by the encryption and the reliability suites."""
from __future__ import annotations

import os
from typing import Any, Iterable, List, Tuple


def files_under(*dirs: Any) -> List[str]:
    """Paths of every file below each of ``dirs`` (recursively)."""
    out = []
    for d in dirs:
        for root, _dirs, names in os.walk(str(d)):
            out.extend(os.path.join(root, n) for n in names)
    return out


def hits(paths: Iterable[str], markers: Iterable[bytes]) -> List[Tuple[str, bytes]]:
    """(path, marker) for every marker found in the bytes of each readable path; a path
    that vanished or cannot be read is passed over (temp files come and go)."""
    found = []
    markers = list(markers)
    for p in paths:
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for m in markers:
            if m in data:
                found.append((p, m))
    return found
