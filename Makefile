# The two commands a newcomer runs on a fresh machine are `make run` and `make test`:
# each sets up .venv from this repo's own files first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN_DIR ?= runs/qg
ARGS   ?=
# The CPU build of torch 2.13 lies on local disk here; a bare `torch` pulls a multi-GB CUDA build.
# On a GPU cluster, set TORCH_SPEC to the CUDA build you want (same release), e.g. TORCH_SPEC=torch==2.13.0
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test test-all lint bench bench-gpu clean help

help:
	@echo "make run      set up .venv, then run the main job (simdiff run) on the built-in QG data"
	@echo "make test     set up .venv, then ruff + lint-imports + the default test suite (CPU, minutes)"
	@echo "make test-all the default suite plus the slow tests (not the slurm ones: .ci/run)"
	@echo "make bench    every benchmark -> bench/results.json, bench/RESULTS.md (ARGS=--quick: minutes)"
	@echo "make bench-gpu  on a CUDA machine: bf16 training samples/s and MFU, members/s, peak memory -> bench/results.json"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	scripts/system-deps.sh
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $@

run: setup
	$(BIN)/simdiff run run_dir=$(RUN_DIR) $(ARGS)

# lint-imports: the layer contracts in pyproject.toml ([tool.importlinter], DESIGN.md section 3).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Two xdist workers on a 2-core machine: one torch/BLAS thread each, or they oversubscribe the
# cores (measured: tiny nets ran several times slower with torch's default threads per worker).
TEST_ENV := OMP_NUM_THREADS=1

# Tests marked slurm submit to a SLURM cluster (scripts/slurm-up.sh starts one; .ci/run runs them
# in their own step): not in the default suite, even on a machine where a cluster is up.
test: lint
	$(TEST_ENV) $(BIN)/pytest -n 2 -m "not slow and not slurm" $(ARGS)

test-all: lint
	$(TEST_ENV) $(BIN)/pytest -n 2 -m "not slurm" $(ARGS)

# The peer (pixel-space diffusers), sampler sweep, latent vs pixel, scaling, memory, loader,
# kill/resume and the GPU script (a CPU check without CUDA): benchmarks/run_all.py.
bench: setup
	PYTHONPATH=. $(BIN)/python benchmarks/run_all.py $(ARGS)

bench-gpu: setup
	$(BIN)/python benchmarks/bench_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
