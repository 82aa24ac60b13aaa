"""Build glue for the one native artifact, ``heliosdb._native``.

It is a cffi API-mode module *and* a SQLite loadable extension (entry point
``sqlite3_heliosdb_init``): one shared library, linked only against OpenSSL's libcrypto.
If it cannot be built (no compiler, no OpenSSL or SQLite headers) the package still
installs, says so once, and runs on its pure-Python paths; encrypted databases then
refuse to open with an error naming what is missing.
"""
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the native module if possible; never fail the install because of it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure is reported, not fatal
            self._warn(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if os.environ.get("HELIOSDB_REQUIRE_NATIVE"):
            raise exc
        msg = (
            "heliosdb: the native extension (csrc/) could not be built: "
            f"{exc}. Installing without it: the audit chain uses its pure-Python "
            "implementation and encrypted databases cannot be opened. Install a C "
            "compiler and Debian's libssl-dev and libsqlite3-dev, then reinstall."
        )
        print("\n" + "=" * 78 + "\n" + msg + "\n" + "=" * 78 + "\n")


setup(
    cffi_modules=["csrc/build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
