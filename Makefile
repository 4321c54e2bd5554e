# citysense: `make run` to see it work, `make test` to check it, `make lint` for style.
# Both install what is missing first (Debian packages, then .venv with the project).

VENV    := .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint format bench bench-scale bench-stages bench-gateway deps test-deps system-deps test-system-deps venv clean stack-up stack-down

# What running needs; `make test` adds the test-only packages (VictoriaMetrics, Chromium, a CJK font).
deps: system-deps venv

test-deps: test-system-deps venv

test-system-deps:
	@scripts/system-deps.sh test

system-deps:
	@scripts/system-deps.sh

venv: $(STAMP)

# Reinstall only when the dependency list changes; the project itself is editable.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: deps
	$(BIN)/citysense run

# The unit tests on both cores (CPU-bound, independent); the integration tests one at a
# time, as their real services and timings expect.
test: test-deps lint
	$(BIN)/python -m pytest -n 2 tests/unit $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: deps
	$(BIN)/citysense stack up

stack-down: venv
	$(BIN)/citysense stack down

clean:
	-$(BIN)/citysense stack down
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# End to end against the broker's own limit: its own Mosquitto and InfluxDB, ~5 minutes,
# writes bench-results.json (see benchmarks/README.md). BENCH_ARGS="--k 20000 --repeat 1" etc.
BENCH_ARGS ?=
bench: deps
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Per-message cost of decode, rules and line protocol, on a dry run of the example city.
# Issue 16: the same backlog through Mosquitto and through a 3-node NATS cluster (a few minutes).
bench-scale: deps
	$(BIN)/python -m benchmarks.scale $(BENCH_ARGS)

bench-stages: venv
	$(BIN)/python benchmarks/stage_costs.py

# Issue 20: frames/s one field gateway process parses, publishes (QoS 1, PUBACK) and answers,
# 200 and 1000 stations per protocol on its own Mosquitto (~2.5 min); bench-gateway-results.json.
# BENCH_GATEWAY_ARGS="--duration 10 --stations 500", "--profile" (cProfile's top costs).
BENCH_GATEWAY_ARGS ?=
bench-gateway: deps
	$(BIN)/python -m benchmarks.gateway $(BENCH_GATEWAY_ARGS)
