# `make demo` and `make test` do all the set-up they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python

# The demo needs the package and its server extra; the checks add the test tools.
$(VENV)/.demo: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server]'
	touch $@

$(VENV)/.installed: $(VENV)/.demo
	$(PY) -m pip install -q -e '.[server,test]'
	touch $@

.PHONY: demo test lint bench postgres
demo: $(VENV)/.demo
	$(PY) examples/demo.py

lint: $(VENV)/.installed
	$(PY) -m ruff check kvpio_mapping tests benchmarks examples
	$(PY) -m ruff format --check kvpio_mapping tests benchmarks examples
	$(PY) -m mypy

# The PostgreSQL tests start a server of their own from its binaries: install
# them when missing (as root where apt-get exists); else the tests fail and say why.
postgres: $(VENV)/.installed
	@if [ -z "$$KVPIO_TEST_POSTGRES" ] && ! $(PY) -c \
	    'import sys, kvpio_mapping.testing as t; sys.exit(t.postgres_bindir() is None)'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else \
	    echo "PostgreSQL server binaries missing: install postgresql, or the tests fail"; \
	  fi; \
	fi

test: lint postgres
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/client_bench.py
	$(PY) benchmarks/async_bench.py
	$(PY) benchmarks/server_bench.py
	$(PY) benchmarks/write_bench.py
	$(PY) benchmarks/read_bench.py
	$(PY) benchmarks/storage_bench.py
	$(PY) benchmarks/sharing_bench.py
	$(PY) benchmarks/live_bench.py
	$(PY) benchmarks/count_bench.py
