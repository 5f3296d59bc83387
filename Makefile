# musicstream: the two commands a new user runs are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo test test-quick test-gpu lint typecheck format bench bench-step bench-train bench-shards clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,gbm]'
	touch $(STAMP)

install: $(STAMP)

## Synthesise a small dataset, build shards, benchmark the loader, train the custom CNN, evaluate.
demo: $(STAMP)
	$(BIN)/python -m train.demo --out $(DEMO_DIR)

## The whole test suite, slow tests included (CPU; GPU tests skip without CUDA). CI runs this.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

## The quick subset a plain `pytest` runs (no `slow` tests).
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Type-check the packages (configured in pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Input pipeline: DALI gpu (with CUDA) vs DALI cpu vs the webdataset+torchaudio DataLoader.
bench: $(STAMP)
	$(BIN)/python -m pipelines.bench --synth $(DEMO_DIR)/bench --workers $(JOBS)

## How input-bound training is: steps/s on GPU-resident synthetic batches vs the real loader.
bench-step: $(STAMP)
	$(BIN)/python -m train.stepbench --synth $(DEMO_DIR)/bench --family efficientnet_b2

## Training throughput per model family on synthetic batches.
bench-train: $(STAMP)
	$(BIN)/python -m train.bench --shape 3,64,64 --batch 16 --steps 8 --warmup 2 --repeat 3

## Shard building from MP3 sources (x real time per core).
bench-shards: $(STAMP)
	$(BIN)/python -m shards bench --tracks 48 --seconds 30 --dir /tmp/shards-bench

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
