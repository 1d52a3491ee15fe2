# Everything a fresh machine needs comes from here: `make run` and `make test`
# create the virtual environment, install the project and generate gRPC code.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTO_OUT := protos/link_pb2.py protos/link_pb2_grpc.py protos/link_pb2.pyi
HTTP_LISTEN ?= 127.0.0.1:8000
LINK_LISTEN ?= 127.0.0.1:7443
ENROLL_LISTEN ?= 127.0.0.1:7444
PYTEST_ARGS ?=
# Most tests wait on commits, timers and real gateways rather than compute: four workers
# on two cores take the suite from about 27 min to about 12 (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 4
CHROMIUM ?= chromium

.PHONY: help install proto run demo hubs test unit integration interop chaos e2e browser postgres bench bench-quick lint fmt wheel clean

help:
	@echo "make demo       hub, a real OpenClaw gateway, a sidecar and two agents on this machine"
	@echo "make run        start the hub with embedded SQLite under ./var/"
	@echo "make hubs       three hubs on one PostgreSQL on loopback (state in var/hubs/)"
	@echo "make test       lint, then the whole test suite (unit, integration, interop)"
	@echo "make interop    only the tests against a real OpenClaw gateway"
	@echo "make chaos      seeded crashes and partitions against a real gateway (CHAOS_ROUNDS, CHAOS_SEED)"
	@echo "make e2e        only the dashboard's browser tests (headless Chromium)"
	@echo "make postgres   the PostgreSQL server binaries the store tests start (Debian's)"
	@echo "make bench      benchmarks (figures and ratios against the raw stack)"
	@echo "make lint       ruff check, format check, mypy"
	@echo "make proto      regenerate the gRPC modules from protos/*.proto"
	@echo "make wheel      build dist/*.whl (what packaging/install.sh --from installs)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "Python 3.11 or newer is required (PYTHON=$(PYTHON))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(PROTO_OUT): protos/link.proto protos/generate.py $(INSTALLED)
	$(BIN)/python protos/generate.py >/dev/null

proto: $(INSTALLED)
	$(BIN)/python protos/generate.py

install: $(INSTALLED) $(PROTO_OUT)

run: install
	$(BIN)/mc-hub serve --data-dir var/hub --http-listen $(HTTP_LISTEN) \
	  --link-listen $(LINK_LISTEN) --enroll-listen $(ENROLL_LISTEN)

# Everything on loopback (state in var/demo/, OpenClaw cached in var/cache/openclaw/ or
# $OPENCLAW_CACHE_DIR); Ctrl-C stops all of it.
demo: install
	$(BIN)/mc-hub demo --http-listen $(HTTP_LISTEN) --link-listen $(LINK_LISTEN) \
	  --enroll-listen $(ENROLL_LISTEN)

# PostgreSQL (Debian's server binaries, see `postgres`) and three hubs sharing it, all on
# loopback, state in var/hubs/; Ctrl-C stops all of it.
hubs: install postgres
	$(BIN)/python -m hub.demo hubs --state-dir var/hubs

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint browser postgres
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install postgres
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

e2e: install browser
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# The browser tests drive the system's Chromium (Playwright's own download cannot run
# here): installed from Debian's packages when missing and we may, else say how.
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests (tests/e2e)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	      || echo "make: apt-get could not install chromium; the browser tests will be skipped" >&2; \
	  else \
	    echo "make: no Chromium for the browser tests: install it (Debian/Ubuntu: sudo apt-get install -y chromium; macOS: brew install --cask chromium) or set CHROMIUM=/path/to/chromium; until then tests/e2e is skipped" >&2; \
	  fi; }

# The store's tests run on SQLite and on a real PostgreSQL that they start themselves on
# loopback (tests/postgres_server.py) from the distribution's server binaries: installed
# from Debian's packages when missing and we may (no cluster of the package's own is
# created or started), else say how.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
	  || [ -n "$$MC_TEST_POSTGRES_BIN" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql for the store tests (their PostgreSQL half)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    mkdir -p /etc/postgresql-common; \
	    [ -e /etc/postgresql-common/createcluster.conf ] \
	      || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
	    apt-get install -y -qq postgresql >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } \
	      || echo "make: apt-get could not install postgresql; the PostgreSQL half of the store tests will be skipped" >&2; \
	  else \
	    echo "make: no PostgreSQL server for the store tests: install it (Debian/Ubuntu: sudo apt-get install -y postgresql; macOS: brew install postgresql) or set MC_TEST_POSTGRES_BIN=/path/to/bin; until then the PostgreSQL half of the store tests is skipped" >&2; \
	  fi; }

interop: install
	$(BIN)/python -m pytest -m interop tests/interop $(PYTEST_ARGS)

# CHAOS_ROUNDS rounds (default 100); CHAOS_SEED=N replays a run; CHAOS_ARGS=--keep keeps its files.
chaos: install
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

wheel: install
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) build dist *.egg-info protos/*_pb2*.py protos/*_pb2*.pyi .pytest_cache .ruff_cache
