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

# Each script prints ours beside its baselines; the load average is printed before it.
# The PostgreSQL rows come from a server started as the tests start theirs. About 25 minutes.
# busy_bench.py compares against another checkout: run it by hand with --baseline.
BENCHES := client_bench.py async_bench.py 'server_bench.py --postgres' \
	'write_bench.py --postgres' 'read_bench.py --postgres' 'storage_bench.py --postgres' \
	sharing_bench.py live_bench.py count_bench.py hostile_bench.py
bench: postgres
	@for bench in $(BENCHES); do \
	  echo "== benchmarks/$$bench; $$(uptime | sed 's/.*load/load/') on $$(nproc) cores"; \
	  $(PY) benchmarks/$$bench || exit 1; \
	done
