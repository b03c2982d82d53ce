# mega-fairseq: the two commands a new user runs are `make demo` and `make test`.
# Both set up the environment themselves (`make install`, idempotent and quick when done).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest workers: 2 matches the 2-core CI machine; each worker keeps torch to one thread.
PYTEST_WORKERS ?= 2

.PHONY: install test test-fast demo demo-translation demo-lm demo-lra bench clean help

help:
	@echo "make demo   - set up, then train/translate/score a tiny Mega and a tiny Mega LM (~10 min)"
	@echo "make test   - set up, then run the test suite (~10 min on 2 cores)"
	@echo "make test-fast - set up, then only the unit tests (no subprocess runs; under a minute)"
	@echo "make demo-lra - set up, then train a small Mega on short ListOps (LRA) on CPU and print its test accuracy (~5 min)"
	@echo "make install- only set up .venv (torch 2.13.0 CPU, patched fairseq 0.12.2, mega_fairseq)"
	@echo "make bench  - run the benchmarks in benchmarks/ (prints JSON)"
	@echo "make gpu-check - run the GPU tests (tests/gpu) and write gpu-check.json (says so and exits 0 without CUDA)"

install:
	@PYTHON=$(PYTHON) bash tools/install.sh

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) tests

# unit tests only: everything not marked e2e (tests/e2e and tests/stack run CLIs in subprocesses)
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not e2e" tests

# GPU tests (tests/gpu, marker gpu) with a JSON summary; without CUDA they are skipped and it exits 0
gpu-check: install
	OMP_NUM_THREADS=1 $(BIN)/python tests/gpu/run_gpu_check.py --output gpu-check.json

demo: install demo-translation demo-lm

demo-translation: install
	bash examples/translation/demo.sh

demo-lm: install
	bash examples/language_model/demo.sh

# Long Range Arena: ListOps at reduced length, accuracy vs the majority class (examples/lra/demo.sh)
demo-lra: install
	bash examples/lra/demo.sh

bench: install
	$(BIN)/python benchmarks/bench_layers.py
	$(BIN)/python benchmarks/bench_translation.py
	$(BIN)/python benchmarks/bench_lm.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
