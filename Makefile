# The two README commands. Each does all set-up on a fresh machine.
#   make run   build the default model repository (offline) and serve serve_config.yaml
#   make test  run the whole test suite (unit, integration with real Ray Serve, e2e)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,examples,test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test install models lint format clean

install: $(STAMP)

# torch is pinned first: 2.13.0 is the CPU build already on disk; an unpinned torch would pull
# gigabytes of CUDA packages.
# tensorflow-serving-api (TF Serving's protos) goes in with --no-deps: it requires the full
# `tensorflow` distribution, which would be installed over tensorflow-cpu (see pyproject.toml).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps tensorflow-serving-api==2.21.0
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/python -m serve_app.examples --out model_repository

# Ray Serve's fast request path (serve_app/fast_path.py): direct ingress behind HAProxy.
run: models
	$(BIN)/serve-app check serve_config.yaml
	env $$($(BIN)/python -m serve_app.fast_path) $(BIN)/serve run serve_config.yaml

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) model_repository .pytest_cache

# The comparison with peers (bench/README.md): `make bench-setup` once (wrk, a venv per peer
# under bench/.venvs), then `make bench-compare`; e.g. a smoke run:
#   make bench-compare BENCH_ARGS="--duration 3 --concurrency 1 16"
BENCH_ARGS ?=
.PHONY: bench-setup bench-compare

bench-setup: $(STAMP)
	bash bench/setup_peers.sh

bench-compare: bench-setup models
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
