"""A header that cannot hurt: flip bytes of the HeliosDB header, open each damaged file.

Each case is opened by a worker subprocess (several cases per worker, one at a time)
watched by this process: a case that does not finish within HANG_SECONDS is a hang (the
worker is killed and the next case goes to a new worker), a worker that dies is a crash,
an exception that is not a ``heliosdb.errors.Error`` naming the file is a raw exception,
and a case that grows the worker's peak RSS by more than SPIKE_MIB is a memory spike. All
four counts must be zero. Every case must also end in one of: the file opens and reads
back its rows, or a HeliosDB error naming the file. A budget warning must never print a
percentage past 100.

``make test`` runs every header field and slot byte with four bit patterns on a passphrase
database and a raw-key database made with version 2 (and on the saved version-1 files of
tests/vectors/v1); the ``slow`` test runs every one of the 4096 bytes with ten patterns.
The counts are recorded in RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from collections import Counter
from typing import Dict, List, Tuple

import pytest

import heliosdb
from heliosdb.crypto import format as fmt

from helpers.enc import KEY

pytestmark = pytest.mark.skipif(not heliosdb.native_available(), reason="needs the C extension")

HANG_SECONDS = 60.0   # a watchdog, not a performance threshold: a case takes milliseconds
SPIKE_MIB = 128       # the test profile's Argon2id uses 64 KiB
PASS = "fuzz passphrase"
VECTORS = os.path.join(os.path.dirname(__file__), "vectors", "v1")

WORKER = r'''
import json, os, re, resource, sys, warnings
sys.path.insert(0, sys.argv[1])
import heliosdb
from heliosdb import errors
from heliosdb.crypto import format as fmt

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

cases = json.loads(sys.stdin.readline())
for i, (base, key, off, xor, rows) in enumerate(cases):
    print("start", i, flush=True)
    work = base + ".case"
    with open(base, "rb") as f:
        raw = bytearray(f.read())
    raw[off] ^= xor
    with open(work, "wb") as f:
        f.write(raw)
    for suf in ("-wal", "-shm", "-journal"):
        if os.path.exists(work + suf):
            os.remove(work + suf)
    if os.path.exists(base + "-wal"):
        with open(base + "-wal", "rb") as src, open(work + "-wal", "wb") as dst:
            dst.write(src.read())
    k = bytes.fromhex(key[4:]) if key.startswith("raw:") else heliosdb.Key.passphrase(key[5:], profile="test")
    before = rss_mib()
    outcome, detail = "ok", ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c = heliosdb.connect(work, key=k)
            try:
                got = c.execute("select count(*) from t").fetchone()[0]
                c.storage_info()
            finally:
                c.close()
            if got != rows:
                outcome, detail = "wrong_data", str(got)
        except errors.Error as exc:
            outcome = "error:" + type(exc).__name__
            detail = str(exc)[:300]
            if work not in str(exc):
                outcome = "unnamed:" + type(exc).__name__
        except BaseException as exc:
            outcome, detail = "raw:" + type(exc).__name__, str(exc)[:300]
    for w in caught:
        m = re.search(r"(\d+)%", str(w.message))
        if m and int(m.group(1)) > 100:
            outcome, detail = "nonsense_warning", str(w.message)[:300]
    spike = rss_mib() - before
    print("done", i, json.dumps([outcome, detail, spike]), flush=True)
'''


def _make(tmp_path, name: str, key) -> str:
    p = str(tmp_path / f"{name}.db")
    c = heliosdb.connect(p, key=key)
    c.execute("create table t(id integer primary key, v text)")
    c.executemany("insert into t(v) values (?)", [(f"row {i}",) for i in range(20)])
    c.commit()
    c.close()
    return p


def _cases(base: str, key: str, offsets: List[int], patterns: Tuple[int, ...],
           rows: int) -> List[list]:
    return [[base, key, off, x, rows] for off in offsets for x in patterns]


def _run(cases: List[list], spike_mib: float = SPIKE_MIB) -> Tuple[Counter, Dict[str, list]]:
    """Run the cases in workers; (outcome counts, examples per outcome). The largest
    peak-RSS growth of one case (MiB) is in ``examples["max_growth_mib"]``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(heliosdb.__file__)))
    counts: Counter = Counter()
    examples: Dict[str, list] = {"max_growth_mib": [0.0]}
    todo = list(cases)
    while todo:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, root], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps(todo) + "\n")
        proc.stdin.flush()
        current, done = None, 0
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], HANG_SECONDS)
            if not ready:
                proc.kill()
                proc.wait()
                counts["hang"] += 1
                examples.setdefault("hang", []).append(todo[current or 0][2:4])
                done = (current or 0) + 1
                break
            line = proc.stdout.readline()
            if not line:
                rc = proc.wait()
                if current is not None and done <= current:
                    counts["crash"] += 1
                    examples.setdefault("crash", []).append(
                        (todo[current][2:4], rc, proc.stderr.read()[-500:]))
                    done = current + 1
                break
            word, idx, *rest = line.split(" ", 2)
            if word == "start":
                current = int(idx)
            elif word == "done":
                outcome, detail, spike = json.loads(rest[0])
                examples["max_growth_mib"][0] = max(examples["max_growth_mib"][0], spike)
                if spike > spike_mib:
                    counts["memory_spike"] += 1
                    examples.setdefault("memory_spike", []).append(todo[int(idx)][2:4])
                counts[outcome] += 1
                if len(examples.setdefault(outcome, [])) < 3:
                    examples[outcome].append((todo[int(idx)][2:4], detail))
                done = int(idx) + 1
        proc.stdout.close()
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        todo = todo[done:]
    return counts, examples


def _bad(counts: Counter) -> Dict[str, int]:
    return {k: v for k, v in counts.items()
            if k in ("hang", "crash", "memory_spike", "wrong_data", "nonsense_warning")
            or k.startswith(("raw:", "unnamed:"))}


def _report(label: str, counts: Counter, examples: Dict[str, list]) -> str:
    return f"{label}: {dict(counts)}; bad examples: " + json.dumps(
        {k: examples.get(k) for k in _bad(counts)}, default=str)[:3000]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    raw = _make(d, "raw", KEY)
    pw = _make(d, "pass", heliosdb.Key.passphrase(PASS, profile="test"))
    out = {"raw": (raw, "raw:" + KEY.hex(), 1), "pass": (pw, "pass:" + PASS, 1)}
    for name, key in (("v1raw", "raw:" + bytes(range(32)).hex()),
                      ("v1pass", "pass:v1 passphrase")):
        src = os.path.join(VECTORS, name[2:] + ".db")
        dst = str(d / (name + ".db"))
        shutil.copy(src, dst)
        shutil.copy(src + "-wal", dst + "-wal")
        out[name] = (dst, key, 1)
    return out


def _read_offsets(nslots: int) -> List[int]:
    """Every byte the code reads: the fixed fields and each used slot."""
    return list(range(0, fmt.SLOTS_OFFSET + fmt.SLOT_SIZE * max(1, nslots) + 8)) + [
        1152, 2000, 4095]


def test_fuzz_header_fields_and_slots(bases):
    cases = []
    for name, (base, key, _) in bases.items():
        cases += _cases(base, key, _read_offsets(1), (0x01, 0x10, 0x80, 0xFF),
                        20 if not name.startswith("v1") else 80)
    counts, examples = _run(cases)
    print(_report(f"fast fuzz, {len(cases)} cases", counts, examples))
    assert sum(counts.values()) - counts["memory_spike"] == len(cases)
    assert not _bad(counts), _report("fast", counts, examples)
    # The flips that matter were seen as damage, not as "wrong key".
    assert counts["error:CorruptHeaderError"] > 0


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_fuzz_every_header_byte_every_pattern(bases):
    """Every byte, ten patterns. Version 2 files: no case grows the RSS by SPIKE_MIB
    (a damaged slot fails its digest before Argon2 runs). Saved version 1 files have no
    digest: a flipped memory bit may derive with up to ARGON2_MEMORY_KIB_MAX (1 GiB),
    the documented bound, and no further."""
    from heliosdb.crypto.keys import ARGON2_MEMORY_KIB_MAX

    pats = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF, 0x5A)
    for group, limit in ((("raw", "pass"), SPIKE_MIB),
                         (("v1raw", "v1pass"), ARGON2_MEMORY_KIB_MAX / 1024 + SPIKE_MIB)):
        cases = []
        for name in group:
            base, key, _ = bases[name]
            cases += _cases(base, key, list(range(fmt.HEADER_SIZE)), pats,
                            20 if not name.startswith("v1") else 80)
        counts, examples = _run(cases, limit)
        print(_report(f"exhaustive fuzz {group}, {len(cases)} cases, max RSS growth "
                      f"{examples['max_growth_mib'][0]:.0f} MiB", counts, examples))
        assert not _bad(counts), _report("exhaustive", counts, examples)


def test_saved_version_1_files_still_open(tmp_path):
    for name, key in (("raw", bytes(range(32))),
                      ("pass", heliosdb.Key.passphrase("v1 passphrase", profile="test"))):
        p = tmp_path / f"{name}.db"
        shutil.copy(os.path.join(VECTORS, f"{name}.db"), p)
        shutil.copy(os.path.join(VECTORS, f"{name}.db-wal"), str(p) + "-wal")
        c = heliosdb.connect(str(p), key=key)
        assert c.execute("select count(*) from t").fetchone()[0] == 80
        assert c.storage_info()["format_version"] == 1
        c.close()


@pytest.mark.parametrize("field,off,value,needle", [
    ("time_cost", 128 + 4, 0xFFFFFFFF, "time_cost"),
    ("time_cost", 128 + 4, 1 << 20, "time_cost"),
    ("memory_kib", 128 + 8, 16 * 1024 * 1024, "memory_kib"),
    ("parallelism", 128 + 12, 0, "parallelism"),
    ("kdf", 128 + 1, None, "kdf"),
])
def test_kdf_parameters_are_bounded_before_derivation(tmp_path, field, off, value, needle):
    """The issue's reproductions: each is a CorruptHeaderError naming the file and field,
    raised before Argon2 runs (a version-1 file has no slot digest, so the bounds are
    what stops it there; a version-2 file stops at the digest first)."""
    import struct

    from heliosdb.errors import CorruptHeaderError

    for version_file in ("v1", "v2"):
        p = tmp_path / f"{field}-{version_file}.db"
        if version_file == "v1":
            shutil.copy(os.path.join(VECTORS, "pass.db"), p)
            key = heliosdb.Key.passphrase("v1 passphrase", profile="test")
        else:
            _make(tmp_path, f"{field}-{version_file}", heliosdb.Key.passphrase(PASS, profile="test"))
            key = heliosdb.Key.passphrase(PASS, profile="test")
        raw = bytearray(p.read_bytes())
        if value is None:
            raw[off] = 7
        else:
            raw[off:off + 4] = struct.pack(">I", value)
        p.write_bytes(bytes(raw))
        with pytest.raises(CorruptHeaderError) as ei:
            heliosdb.connect(str(p), key=key)
        assert str(p) in str(ei.value) and ei.value.file == str(p)
        if version_file == "v1":
            assert ei.value.field == needle
        else:
            assert ei.value.field in ("digest", needle)


def test_edited_nonce_counter_never_prints_nonsense(tmp_path):
    import struct
    import warnings

    p = _make(tmp_path, "ctr", KEY)
    for value in (2 ** 32 * 16777216, 2 ** 33, 2 ** 63):
        with open(p, "r+b") as f:
            f.seek(fmt.OFF_COUNTER)
            f.write(struct.pack(">Q", value))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c = heliosdb.connect(p, key=KEY)
            info = c.storage_info()
            c.close()
        text = " ".join(str(w.message) for w in caught)
        assert "rotate the data key" in text and "%" not in text, text
        assert info["nonce_warning"]
        assert info["nonce_counter_damaged"] == (value > 2 ** 48)
        if value > 2 ** 48:
            assert "damaged" in text
        else:
            assert "past the 2^32" in text


@pytest.mark.parametrize("off,field", [(52, "flags"), (99, "generation"), (128 + 2, "reserved")])
def test_unauthenticated_fields_of_issue_23_are_checked(tmp_path, off, field):
    from heliosdb.errors import CorruptHeaderError

    p = _make(tmp_path, "f", KEY)
    with open(p, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x02]))
    with pytest.raises(CorruptHeaderError) as ei:
        heliosdb.connect(p, key=KEY)
    assert p in str(ei.value)
    # flags: parse error; generation: version-2 key check (or digest); slot bytes 2-3:
    # the slot check.
    assert ei.value.field in (field, "digest", "key_check")
