# musicstream: the two commands a new user runs are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# Versions tested together; without them pip's resolver gives up on boto3/botocore (see the file).
CONSTRAINTS ?= .ci/constraints.txt

.PHONY: install demo test test-quick test-gpu gpu-proof lint typecheck format bench bench-step bench-train bench-shards clean

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,gbm,cloud,ray,tensorboard]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
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

## The GPU path proved in one run of <= 430 s (device lease; docs/benchmarks.md "GPU proof"): the
## hand-off check, gpu tests (not slow), pipeline bench, input-bound check, torchrun SIGTERM + resume. JSON + markdown in
## $(GPU_PROOF_OUT). Runs from the source tree with $(PY) (no venv, no install): on the device
## machine its python3. `make gpu-proof DEVICE=cpu` is the tiny CPU dry run, with the project's
## venv ($(VENV), from `make install`) when it has one; PY=... on the command line wins.
DEVICE ?= gpu
GPU_PROOF_OUT ?= /tmp/musicstream-gpu-proof
GPU_PROOF_ARGS ?=
GPU_PROOF_VENV := $(if $(filter cpu,$(DEVICE)),$(if $(filter command line,$(origin PY)),,$(BIN)/python))
gpu-proof:
	@py="$(PY)"; if [ -n "$(GPU_PROOF_VENV)" ] && [ -x "$(GPU_PROOF_VENV)" ]; then py="$(GPU_PROOF_VENV)"; fi; \
	echo "PYTHONPATH=$(CURDIR) $$py -m train.gpu_proof --device $(DEVICE) --out $(GPU_PROOF_OUT) $(GPU_PROOF_ARGS)"; \
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $$py -m train.gpu_proof --device $(DEVICE) --out $(GPU_PROOF_OUT) $(GPU_PROOF_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
