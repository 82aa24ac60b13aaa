# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the package (editable, with its C extension).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NATIVE_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/*.cdef csrc/*.py)

.PHONY: demo test stress bench bench-quick bench-audit bench-dbapi install check-headers clean test-pythons test-pythons-subset

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
	@$(MAKE) --no-print-directory test-pythons-subset

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

# Every supported interpreter pyenv holds (3.10-3.13), each in its own venv under
# build/pythons/<minor>, made from pyenv's interpreter with pip's own index (the package
# editable, its C extension built in place: the one `_native.abi3.so` serves every Python),
# and made again when pyproject.toml, setup.py or csrc/ changed, or pyenv's interpreter did.
# A venv that cannot be made fails the run, saying which. `make test` runs the tests listed
# in tests/pythons.txt (those whose outcome depends on the interpreter's version, CPython's
# own sqlite3 tests among them, and a smoke of encryption and audit) on each of them but
# .venv's; `make test-pythons` runs the whole suite on all of them (not in CI: 40 min with
# fresh venvs, 26 min with existing ones, on 2 shared cores). Both say which interpreters
# ran (passed or FAILED, tests and seconds) and which are not installed: a missing one is
# reported, not a failure; one that ran and failed fails the run.
PYENV_ROOT ?= $(HOME)/.pyenv
SUPPORTED_PYTHONS ?= 3.10 3.11 3.12 3.13
PYTHONS_DIR := build/pythons
PYTHONS_SUBSET = $(shell sed -e 's/\#.*//' tests/pythons.txt)
BUILD_REQUIRES := "setuptools>=68" wheel "cffi>=1.16"

# $(PYTHONS_DIR)/<minor>/.installed: the package and the tests/pythons.txt tools (extra
# "test-core"); .installed-test adds the rest of the test extra, for the whole suite.
# The build requirements are installed first so that the extension builds in the venv
# (--no-build-isolation: no throwaway environment per install).
$(PYTHONS_DIR)/%/.installed: pyproject.toml setup.py $(NATIVE_SOURCES)
	@py=$$(ls -d $(PYENV_ROOT)/versions/$*.* 2>/dev/null | sort -V | tail -1); \
	test -n "$$py" -a -x "$$py/bin/python" || { echo "pythons: no Python $* in $(PYENV_ROOT)/versions"; exit 1; }; \
	rm -rf $(PYTHONS_DIR)/$* && echo "pythons: making the Python $* venv ($$py)" \
	&& $$py/bin/python -m venv $(PYTHONS_DIR)/$* \
	&& $(PYTHONS_DIR)/$*/bin/python -m pip install -q $(BUILD_REQUIRES) \
	&& HELIOSDB_REQUIRE_NATIVE=1 $(PYTHONS_DIR)/$*/bin/python -m pip install -q --no-build-isolation -e '.[test-core]' \
	&& echo "$$py" > $@ \
	|| { echo "pythons: making the Python $* venv FAILED (see above)"; rm -f $@; exit 1; }

$(PYTHONS_DIR)/%/.installed-test: $(PYTHONS_DIR)/%/.installed
	@HELIOSDB_REQUIRE_NATIVE=1 $(PYTHONS_DIR)/$*/bin/python -m pip install -q --no-build-isolation -e '.[test]' \
	&& cp $< $@ || { echo "pythons: installing the test extra in Python $* FAILED"; exit 1; }

# $(call run_pythons,<minors>,<stamp>,<pytest arguments>,<label>)
define run_pythons
	@ran=""; missing=""; failed=""; \
	for minor in $(1); do \
	  py=$$(ls -d $(PYENV_ROOT)/versions/$$minor.* 2>/dev/null | sort -V | tail -1); \
	  if [ -z "$$py" ] || [ ! -x "$$py/bin/python" ]; then missing="$$missing $$minor"; continue; fi; \
	  venv=$(PYTHONS_DIR)/$$minor; \
	  echo "=== Python $$minor ($$py): $(4)"; \
	  t0=$$(date +%s); \
	  if [ "$$(cat $$venv/.installed 2>/dev/null)" != "$$py" ]; then rm -rf $$venv; fi; \
	  if ! $(MAKE) --no-print-directory $$venv/$(2); then \
	    failed="$$failed $$minor"; ran="$$ran, $$minor FAILED (install)"; continue; fi; \
	  t1=$$(date +%s); \
	  { $$venv/bin/python -m pytest -q -p no:cacheprovider $(3); echo $$? > $$venv/.rc; } | tee $$venv/.log; \
	  counts=$$(tail -1 $$venv/.log | sed -e 's/=//g' -e 's/ in [0-9.]*s.*//' -e 's/^ *//'); \
	  if [ "$$(cat $$venv/.rc)" = 0 ]; then outcome=passed; else outcome=FAILED; failed="$$failed $$minor"; fi; \
	  ran="$$ran, $$minor $$outcome ($$counts; install $$((t1 - t0)) s, tests $$(($$(date +%s) - t1)) s)"; \
	done; \
	echo "pythons ($(4)): $${ran#, }$${ran:+; }missing:$${missing:- none}"; \
	test -z "$$failed"
endef

# The interpreters besides .venv's (whose minor version its python prints).
OTHER_PYTHONS = $(filter-out $(shell $(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'),$(SUPPORTED_PYTHONS))

test-pythons-subset: $(STAMP)
	$(call run_pythons,$(OTHER_PYTHONS),.installed,-m "not slow" $(PYTHONS_SUBSET),tests/pythons.txt)

test-pythons:
	$(call run_pythons,$(SUPPORTED_PYTHONS),.installed-test,-m "not slow",whole suite)
