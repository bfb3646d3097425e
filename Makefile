# swsl-cli. Every target runs inside ./.venv and creates it when it is missing:
#   make train    the runtime install only (TensorFlow, TFDS, TensorBoard, tqdm), then a run
#   make test     adds the test tools, the sweep and plot extras and CPU builds of PyTorch
#                 and JAX, then every suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
DATA_DIR ?=
LOGDIR ?= tensorboard
EPOCHS ?=
SEEDS ?=
DATA_FLAG := $(if $(DATA_DIR),--data_dir $(DATA_DIR),)
# PyTorch's own index serves CPU-only builds; PyPI's Linux wheels pull in CUDA.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# make test runs TEST_WORKERS tests at a time (pytest-xdist): its slowest tests mostly wait
# on the processes they start.
TEST_WORKERS ?= 2

.PHONY: install install-test test lint train tensorboard reproduce bench gpu-check clean

# The stamps record what is installed; they are redone when the package's metadata changes.
$(VENV)/.runtime: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "swsl-cli needs Python >= 3.10; $(PYTHON) is $$($(PYTHON) -V 2>&1). Pass PYTHON=python3.X"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.sweep: $(VENV)/.runtime
	$(BIN)/pip install -q -e ".[sweep,plot]"
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -e ".[dev,sweep,plot]"
	# CPU builds of PyTorch and JAX, for the layer tests on the other Keras backends.
	$(BIN)/pip install -q --extra-index-url $(TORCH_CPU_INDEX) "torch==2.13.0"
	$(BIN)/pip install -q "jax==0.10.2"
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

LAYER_TESTS := tests/test_layers.py tests/test_locally_connected.py tests/test_low_rank_local.py \
	tests/test_coordinates.py tests/test_lrn.py \
	tests/test_optimizers.py tests/test_visualize.py

test: $(VENV)/.test
	SWSL_OFFLINE=1 $(BIN)/python -m pytest -q -W ignore::DeprecationWarning -n $(TEST_WORKERS)
	SWSL_OFFLINE=1 KERAS_BACKEND=torch $(BIN)/python -m pytest -q -W ignore::DeprecationWarning \
		$(LAYER_TESTS)
	# JAX compiles every eager op per shape; unoptimised XLA code compiles ~3x faster
	# and is plenty for these small tensors.
	SWSL_OFFLINE=1 KERAS_BACKEND=jax JAX_PLATFORMS=cpu XLA_FLAGS=--xla_backend_optimization_level=0 \
		$(BIN)/python -m pytest -q -W ignore::DeprecationWarning -n $(TEST_WORKERS) $(LAYER_TESTS)

lint: $(VENV)/.test
	$(BIN)/ruff check swsl_cli tests benchmarks
	$(BIN)/ruff format --check swsl_cli tests benchmarks

train: $(VENV)/.runtime
	$(BIN)/swsl-train $(DATA_FLAG) --logdir $(LOGDIR) $(ARGS)

tensorboard: $(VENV)/.runtime
	$(BIN)/tensorboard --logdir $(LOGDIR)

# The README's commands as one sweep (benchmarks/reproduce.yaml), into a logdir of their own
# per budget; a second `make reproduce` skips what is complete and resumes what was stopped.
# Then the accuracy floors, checked on the groups of seeds.
REPRODUCE_LOGDIR ?= $(LOGDIR)/reproduce-$(or $(EPOCHS),10)ep
reproduce: $(VENV)/.sweep
	$(BIN)/swsl-train --sweep benchmarks/reproduce.yaml --logdir $(REPRODUCE_LOGDIR) \
		$(if $(EPOCHS),--sweep_set n_epochs=$(EPOCHS),) $(if $(SEEDS),--sweep_set "seeds=$(SEEDS)",) \
		$(if $(DATA_DIR),--sweep_set data_dir=$(DATA_DIR),) $(if $(WORKERS),--sweep_workers $(WORKERS),)
	$(BIN)/python benchmarks/reproduce.py $(REPRODUCE_LOGDIR)

bench: $(VENV)/.runtime
	$(BIN)/python benchmarks/bench.py $(DATA_FLAG)

# Every GPU path of swsl-train in one run (full 60,000-image epochs on a GPU, a tiny CPU run
# elsewhere); one markdown table in bench-out/gpu-check.md, exit 1 if a check fails.
gpu-check: $(VENV)/.runtime
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache bench-out
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
