"""Keys: raw 256-bit keys, key files, environment variables and passphrases.

A :class:`Key` holds its secret in a ``bytearray`` that :meth:`Key.close` zeroes; the
secret never appears in ``repr`` or ``str``. Passphrases are stretched with Argon2id
using a named profile at creation; opening an existing file uses the parameters stored
in its key slot, whatever the profile.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from typing import Dict, Optional, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import KDF_PROFILES as _CONFIG_PROFILES
from ..errors import ConfigError, CorruptHeaderError

__all__ = ["Key", "KdfProfile", "KDF_PROFILES", "get_profile", "derive_kek", "coerce_key", "KeyLike",
           "check_kdf_params", "ARGON2_TIME_COST_MIN", "ARGON2_TIME_COST_MAX",
           "ARGON2_MEMORY_KIB_MIN", "ARGON2_MEMORY_KIB_MAX", "ARGON2_PARALLELISM_MIN",
           "ARGON2_PARALLELISM_MAX"]


@dataclass(frozen=True)
class KdfProfile:
    """Argon2id parameters (memory in KiB), like argon2-cffi's ``profiles``."""

    time_cost: int
    memory_kib: int
    parallelism: int


#: Named Argon2id profiles, the one table the config validates against. ``default`` is
#: RFC 9106's low-memory recommendation (argon2-cffi ``RFC_9106_LOW_MEMORY``);
#: ``interactive`` is OWASP's minimum; ``sensitive`` quadruples the memory for keys that
#: guard long-lived archives; ``test`` is deliberately weak and exists only to keep test
#: suites fast.
KDF_PROFILES: Dict[str, KdfProfile] = {
    name: KdfProfile(p["time_cost"], p["memory_kib"], p["parallelism"])
    for name, p in _CONFIG_PROFILES.items()
}


#: Bounds on the Argon2id parameters of a key slot. A header is read before anything in
#: it can be authenticated (the slot's tag is checked with the key the parameters
#: derive), so every parameter is checked against these bounds *before* a key is
#: derived: a damaged or hostile header costs at most one derivation at the bounds
#: (about 1 GiB for a few seconds), never a hang or a 16 GiB allocation. The largest
#: profile above uses t=4, 256 MiB, p=4; the bounds leave room for stronger custom
#: slots. Argon2 itself needs memory >= 8 KiB x parallelism.
ARGON2_TIME_COST_MIN = 1
ARGON2_TIME_COST_MAX = 10
ARGON2_MEMORY_KIB_MIN = 8
ARGON2_MEMORY_KIB_MAX = 1024 * 1024  # 1 GiB
ARGON2_PARALLELISM_MIN = 1
ARGON2_PARALLELISM_MAX = 16


def check_kdf_params(kdf: int, time_cost: int, memory_kib: int, parallelism: int, *,
                     file: Optional[str] = None, slot: Optional[int] = None) -> None:
    """Raise :class:`~heliosdb.errors.CorruptHeaderError` (naming ``file``, the slot and
    the field) unless the KDF and its parameters are within the documented bounds:
    Argon2id within the ``ARGON2_*`` bounds, HKDF-SHA256 with all three parameters 0."""
    from .format import KDF_ARGON2ID, KDF_HKDF_SHA256

    where = f"{file}: " if file else ""
    where += f"key slot {slot}: " if slot is not None else ""

    def bad(field: str, why: str) -> CorruptHeaderError:
        return CorruptHeaderError(f"{where}damaged HeliosDB header: {field} {why}",
                                  file=file, field=field)

    if kdf == KDF_HKDF_SHA256:
        for name, value in (("time_cost", time_cost), ("memory_kib", memory_kib),
                            ("parallelism", parallelism)):
            if value != 0:
                raise bad(name, f"is {value}, must be 0 for an HKDF-SHA256 slot")
        return
    if kdf != KDF_ARGON2ID:
        raise bad("kdf", f"is {kdf}: unknown KDF id (1 HKDF-SHA256, 2 Argon2id)")
    for name, value, lo, hi in (
            ("time_cost", time_cost, ARGON2_TIME_COST_MIN, ARGON2_TIME_COST_MAX),
            ("parallelism", parallelism, ARGON2_PARALLELISM_MIN, ARGON2_PARALLELISM_MAX),
            ("memory_kib", memory_kib, max(ARGON2_MEMORY_KIB_MIN, 8 * parallelism),
             ARGON2_MEMORY_KIB_MAX)):
        if not lo <= value <= hi:
            raise bad(name, f"is {value}, outside the bounds {lo}..{hi}")


def get_profile(name: str) -> KdfProfile:
    """The named profile; ConfigError naming the choices otherwise."""
    try:
        return KDF_PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown kdf_profile {name!r}: choose one of "
                          f"{', '.join(sorted(KDF_PROFILES))}", key="encryption.kdf_profile") from None


class Key:
    """A database key: 32 raw bytes, or a passphrase to stretch with Argon2id."""

    __slots__ = ("_secret", "kind", "profile", "__weakref__")

    def __init__(self, secret: Union[bytes, bytearray, memoryview], kind: str = "raw",
                 profile: str = "default") -> None:
        if kind not in ("raw", "passphrase"):
            raise ValueError("kind must be 'raw' or 'passphrase'")
        self._secret = bytearray(secret)
        if kind == "raw" and len(self._secret) != 32:
            n = len(self._secret)
            self._secret[:] = bytes(n)
            raise ValueError(f"a raw key must be 32 bytes, got {n}")
        if kind == "passphrase" and not self._secret:
            raise ValueError("empty passphrase")
        get_profile(profile)  # validates the name
        self.kind = kind
        self.profile = profile

    # -- constructors -------------------------------------------------------------
    @classmethod
    def from_bytes(cls, raw: Union[bytes, bytearray, memoryview]) -> "Key":
        """A raw 256-bit key."""
        return cls(raw, "raw")

    @classmethod
    def from_hex(cls, text: str) -> "Key":
        """A raw key from 64 hexadecimal characters (surrounding whitespace ignored)."""
        text = text.strip()
        if len(text) != 64 or any(c not in string.hexdigits for c in text):
            raise ValueError("a hex key must be exactly 64 hexadecimal characters")
        return cls(bytearray.fromhex(text), "raw")

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Key":
        """A key file holding 32 raw bytes or 64 hex characters (plus a newline)."""
        data = bytearray(open(path, "rb").read())
        try:
            if len(data) == 32:
                return cls(data, "raw")
            text = data.decode("ascii", "replace").strip()
            if len(text) == 64:
                return cls.from_hex(text)
            raise ConfigError(f"key file {os.fspath(path)!r} must hold 32 raw bytes or 64 "
                              f"hex characters, found {len(data)} bytes", file=os.fspath(path))
        finally:
            data[:] = bytes(len(data))

    @classmethod
    def from_env(cls, var: str) -> "Key":
        """A raw key from an environment variable holding 64 hex characters."""
        value = os.environ.get(var)
        if value is None:
            raise ConfigError(f"environment variable {var} (the database key) is not set",
                              key="encryption.key_source")
        try:
            return cls.from_hex(value)
        except ValueError:
            raise ConfigError(f"environment variable {var} must hold 64 hex characters",
                              key="encryption.key_source") from None

    @classmethod
    def passphrase(cls, text: Union[str, bytes, bytearray], profile: str = "default") -> "Key":
        """A passphrase, stretched with Argon2id (``profile`` applies to new files)."""
        secret = bytearray(text.encode("utf-8")) if isinstance(text, str) else bytearray(text)
        return cls(secret, "passphrase", profile)

    @classmethod
    def from_passphrase_env(cls, var: str, profile: str = "default") -> "Key":
        """A passphrase read from an environment variable."""
        value = os.environ.get(var)
        if not value:
            raise ConfigError(f"environment variable {var} (the database passphrase) is not set",
                              key="encryption.key_source")
        return cls.passphrase(value, profile)

    # -- use ------------------------------------------------------------------------
    def secret(self) -> bytearray:
        """The secret bytes (a live view of the internal buffer: do not keep it)."""
        if self.closed:
            raise ValueError("the key was closed")
        return self._secret

    @property
    def closed(self) -> bool:
        """True once :meth:`close` wiped the key."""
        return not self._secret

    def close(self) -> None:
        """Zero the secret and forget it."""
        self._secret[:] = bytes(len(self._secret))
        del self._secret[:]

    def __enter__(self) -> "Key":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "hidden"
        extra = f", profile={self.profile!r}" if self.kind == "passphrase" else ""
        return f"<heliosdb.Key {self.kind}{extra} ({state})>"

    __str__ = __repr__

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("heliosdb.Key cannot be pickled")


KeyLike = Union[None, str, bytes, bytearray, memoryview, Key]


def coerce_key(key: KeyLike, kdf_profile: Optional[str] = None) -> Optional[Key]:
    """Turn what ``connect(key=...)`` accepts into a :class:`Key` (None stays None)."""
    if key is None or isinstance(key, Key):
        return key
    if isinstance(key, str):
        return Key.passphrase(key, kdf_profile or "default")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return Key.from_bytes(key)
    raise TypeError(f"key must be a str passphrase, 32 bytes or a heliosdb.Key, "
                    f"not {type(key).__name__}")


def derive_kek(key: Key, kdf: int, salt: bytes, time_cost: int = 0, memory_kib: int = 0,
               parallelism: int = 0) -> bytearray:
    """The key-encryption key for a slot: HKDF-SHA256 for raw keys, Argon2id for passphrases.

    The parameters are checked first (:func:`check_kdf_params`): out of bounds is a
    CorruptHeaderError, never a raw argon2 exception or an unbounded derivation.
    """
    from .format import KDF_ARGON2ID, KDF_HKDF_SHA256

    check_kdf_params(kdf, time_cost, memory_kib, parallelism)
    if kdf == KDF_HKDF_SHA256:
        out = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                   info=b"HeliosDB raw-key KEK v1").derive(bytes(key.secret()))
        return bytearray(out)
    from argon2.exceptions import Argon2Error
    from argon2.low_level import Type, hash_secret_raw

    try:
        out = hash_secret_raw(bytes(key.secret()), salt, time_cost=time_cost,
                              memory_cost=memory_kib, parallelism=parallelism, hash_len=32,
                              type=Type.ID)
    except (Argon2Error, ValueError, OverflowError, MemoryError) as exc:
        raise CorruptHeaderError(f"Argon2id refused the slot's parameters: "
                                 f"{type(exc).__name__}", field="kdf") from None
    return bytearray(out)
