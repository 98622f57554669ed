# The two commands of the README: `make demo` (quickstart job) and `make test`.
# Both set up everything first: a venv, torch 2.13.0 (CPU build) before anything else,
# the project with its dev extras, and the Debian Fashion-MNIST and iproute2 packages when root.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/quickstart
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install -y dataset-fashion-mnist'"; \
	  fi; \
	fi
	@# iproute2 ('ip'): tests/test_network_exposure.py plays another host in a network namespace
	@if ! command -v ip >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; \
	  else \
	    echo "iproute2 missing (the network-exposure test will skip): run 'sudo apt-get install -y iproute2'"; \
	  fi; \
	fi

demo: setup data
	$(BIN)/slimtune run quickstart --out $(OUT) --overwrite

test: setup data lint
	$(BIN)/python -m pytest -q -m "slow or not slow" --durations=20

test-fast: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf runs mlruns.db mlartifacts .pytest_cache
