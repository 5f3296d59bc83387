# musicstream: the two commands a new user runs are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo test test-all test-gpu lint format bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,gbm]'
	touch $(STAMP)

install: $(STAMP)

## Synthesise a small dataset, build shards, benchmark the loader, train the custom CNN, evaluate.
demo: $(STAMP)
	$(BIN)/python -m train.demo --out $(DEMO_DIR)

## The default test run (CPU; GPU tests skip without CUDA).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" 

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m pipelines.bench --synth $(DEMO_DIR)/bench

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
