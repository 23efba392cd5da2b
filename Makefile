# The two entry points of the quick start: `make demo` and `make test`.
# Both set everything up from a fresh Debian machine (apt packages, a venv, the project).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint bench clean

system-deps:
	@if ! command -v influxd >/dev/null || ! command -v victoria-metrics >/dev/null || ! command -v chromium >/dev/null \
			|| ! command -v promtool >/dev/null || ! command -v npm >/dev/null \
			|| ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v nats-server >/dev/null \
			|| ! command -v haproxy >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq influxdb victoria-metrics chromium \
			prometheus postgresql nats-server haproxy $$(command -v npm >/dev/null || echo nodejs npm) >/dev/null; \
	fi

# The third-party CSMS of the local controller tests (ocpp-rpc from npm, pinned by its lock file).
CSMS_DIR := tests/e2e/ocpp_rpc_csms
NPM_STAMP := $(CSMS_DIR)/node_modules/.installed
$(NPM_STAMP): $(CSMS_DIR)/package-lock.json
	cd $(CSMS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,cluster]"
	touch $(STAMP)

setup: system-deps $(STAMP) $(NPM_STAMP)

demo: $(STAMP)
	$(BIN)/balancer demo

lint: $(STAMP)
	$(BIN)/ruff check balancer forecast adapters tests bench
	$(BIN)/mypy

test: setup
	$(BIN)/ruff check balancer forecast adapters tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

bench: $(STAMP)
	$(BIN)/python bench/allocator.py && $(BIN)/python bench/planner.py && $(BIN)/python bench/oscp_forecasts.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CSMS_DIR)/node_modules
