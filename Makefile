# The two README commands. Each does all set-up on a fresh machine.
#   make run   build the default model repository (offline) and serve serve_config.yaml
#   make test  run the whole test suite (unit, integration with real Ray Serve, e2e)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test install install-run install-test models lint format clean

# The install plan (install/plan.py, install/README.md): torch's CPU build first, then the lock
# (install/lock/<set>.txt, pinned with hashes, for Linux x86_64/aarch64 and macOS arm64), then
# the project. `run` is what serving needs (extras cpu, examples); `test` adds the test extra.
install: install-test
install-run: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml install/plan.py install/lock/%.txt | $(BIN)/python
	$(BIN)/python install/plan.py $*
	touch $@

models: $(VENV)/.installed-run
	$(BIN)/python -m serve_app.examples --out model_repository

# Ray Serve's fast request path (serve_app/fast_path.py): direct ingress behind HAProxy.
run: models
	$(BIN)/serve-app check serve_config.yaml
	env $$($(BIN)/python -m serve_app.fast_path) $(BIN)/serve run serve_config.yaml

test: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) model_repository .pytest_cache

# The comparison with peers (bench/README.md): `make bench-setup` once (wrk, h2load, a venv per peer
# under bench/.venvs), then `make bench-compare`; e.g. a smoke run:
#   make bench-compare BENCH_ARGS="--duration 3 --concurrency 1 16"
BENCH_ARGS ?=
.PHONY: bench-setup bench-compare

bench-setup: $(VENV)/.installed-test
	bash bench/setup_peers.sh

bench-compare: bench-setup models
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
