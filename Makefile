# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the package (editable, with its C extension).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NATIVE_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/*.cdef csrc/*.py)

.PHONY: demo test stress bench bench-quick bench-audit bench-dbapi install check-headers clean test-pythons

$(STAMP): pyproject.toml setup.py $(NATIVE_SOURCES)
	@$(MAKE) --no-print-directory check-headers
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@$(BIN)/python -c "import heliosdb, heliosdb.audit.chain as c; print('heliosdb', heliosdb.version, '| native extension:', heliosdb.native_available(), '| chain impl:', c.__impl__)"
	@touch $(STAMP)

install: $(STAMP)

# The C extension needs OpenSSL and SQLite extension headers. Without them the package
# still installs (pure-Python audit chain, no encryption); say which package fixes it.
check-headers:
	@test -f /usr/include/openssl/evp.h || echo "warning: OpenSSL headers missing: apt-get install libssl-dev (encryption will be unavailable)"
	@test -f /usr/include/sqlite3ext.h || echo "warning: SQLite extension header missing: apt-get install libsqlite3-dev (encryption will be unavailable)"
	@command -v cc >/dev/null 2>&1 || echo "warning: no C compiler: apt-get install gcc (encryption will be unavailable)"

demo: $(STAMP)
	$(BIN)/python -m heliosdb demo

# HELIOSDB_IMPL=c: a native build that does not load fails the run (ImportError naming
# why) instead of running pure; the chain_impl fixture still tests pure in-process. The
# suites that exercise both implementations then run again with the pure chain chosen at
# import, as a user's HELIOSDB_IMPL=pure does (measured: 38 s on 2 busy cores).
PURE_SUITES := tests/test_audit_chain.py tests/test_audit_capture.py tests/test_audit_crash.py \
	tests/test_audit_verify.py tests/test_audit_writer.py tests/test_audit_interrupts.py
test: $(STAMP)
	$(BIN)/lint-imports
	HELIOSDB_IMPL=c $(BIN)/python -m pytest -q -m "not slow"
	HELIOSDB_IMPL=pure $(BIN)/python -m pytest -q -m "not slow" $(PURE_SUITES)

# Everything, slow tests included: among them the VFS race check (tests/test_vfs_race.py:
# a multi-threaded workload on encrypted databases under valgrind's helgrind, failing on
# any race reported in csrc/), which needs valgrind.
stress: $(STAMP)
	@command -v valgrind >/dev/null 2>&1 || echo "warning: valgrind missing: apt-get install valgrind (the VFS race check will be skipped)"
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

# Instructions per audited statement under valgrind --tool=callgrind (repeatable on a busy
# machine, unlike times): prints a markdown table, writes bench/results/audit_callgrind.md.
bench-audit: $(STAMP)
	$(BIN)/python bench/audit_callgrind.py

# The same for the plain DB-API path (issue 17, item 4: never slower than stdlib sqlite3):
# heliosdb vs sqlite3 vs APSW per statement; writes bench/results/dbapi_callgrind.md.
bench-dbapi: $(STAMP)
	$(BIN)/python bench/dbapi_callgrind.py

clean:
	rm -rf $(VENV) build *.egg-info heliosdb/_native*.so heliosdb/_native.c

# Rebuild only the native module in place (developers: after editing csrc/).
# HELIOSDB_REQUIRE_NATIVE=1 makes a compile error fail loudly instead of being skipped.
native: $(STAMP)
	HELIOSDB_REQUIRE_NATIVE=1 $(BIN)/python setup.py -q build_ext --inplace

# The suite on every supported interpreter pyenv holds (3.10-3.13), each in its own venv
# under build/pythons/ (CPython's own test_sqlite3 runs in each: tests/cpython). Says which
# ran (passed or failed, with the seconds its install and its suite took) and which were
# not installed; fails if any that ran failed, not for one that is not installed. A venv
# is made again when pyproject.toml or setup.py changed, or pyenv's interpreter did.
# Not part of `make test` nor of CI. Measured on 2 cores shared with other work: 40 min
# with fresh venvs (making the 4 took about 3 min), 26 min with existing ones.
PYENV_ROOT ?= $(HOME)/.pyenv
SUPPORTED_PYTHONS ?= 3.10 3.11 3.12 3.13
test-pythons:
	@ran=""; missing=""; failed=""; \
	for minor in $(SUPPORTED_PYTHONS); do \
	  py=$$(ls -d $(PYENV_ROOT)/versions/$$minor.* 2>/dev/null | sort -V | tail -1); \
	  if [ -z "$$py" ] || [ ! -x "$$py/bin/python" ]; then missing="$$missing $$minor"; continue; fi; \
	  venv=build/pythons/$$minor; \
	  echo "=== Python $$minor ($$py)"; \
	  t0=$$(date +%s); \
	  if [ "$$(cat $$venv/.installed 2>/dev/null)" != "$$py" ]; then rm -rf $$venv; fi; \
	  if [ ! -x $$venv/bin/python ] || [ pyproject.toml -nt $$venv/.installed ] \
	      || [ setup.py -nt $$venv/.installed ]; then \
	    { [ -x $$venv/bin/python ] || $$py/bin/python -m venv $$venv; } \
	      && $$venv/bin/python -m pip install -q --upgrade pip \
	      && $$venv/bin/python -m pip install -q -e '.[test]' && echo "$$py" > $$venv/.installed \
	      || { failed="$$failed $$minor"; ran="$$ran $$minor:FAILED(install)"; continue; }; \
	  fi; \
	  t1=$$(date +%s); \
	  if $$venv/bin/python -m pytest -q -m "not slow" -p no:cacheprovider; \
	  then outcome=passed; else outcome=FAILED; failed="$$failed $$minor"; fi; \
	  ran="$$ran $$minor:$$outcome(install $$((t1 - t0)) s, suite $$(($$(date +%s) - t1)) s)"; \
	done; \
	echo "test-pythons: ran:$${ran:- none}; not installed:$${missing:- none}"; \
	test -z "$$failed"
