# swsl-cli: every target runs inside ./.venv, which `make install` creates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?=
LOGDIR ?= tensorboard
EPOCHS ?=
SEEDS ?=
DATA_FLAG := $(if $(DATA_DIR),--data_dir $(DATA_DIR),)

.PHONY: install test test-torch lint train tensorboard reproduce bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	# CPU builds of PyTorch and JAX, for running the layer tests on the other Keras backends.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q "jax==0.10.2"

LAYER_TESTS := tests/test_layers.py tests/test_locally_connected.py tests/test_lrn.py \
	tests/test_optimizers.py tests/test_visualize.py

test:
	SWSL_OFFLINE=1 $(BIN)/python -m pytest -q -W ignore::DeprecationWarning
	SWSL_OFFLINE=1 KERAS_BACKEND=torch $(BIN)/python -m pytest -q -W ignore::DeprecationWarning \
		$(LAYER_TESTS)
	# JAX compiles every eager op per shape; unoptimised XLA code compiles ~3x faster
	# and is plenty for these small tensors.
	SWSL_OFFLINE=1 KERAS_BACKEND=jax JAX_PLATFORMS=cpu XLA_FLAGS=--xla_backend_optimization_level=0 \
		$(BIN)/python -m pytest -q -W ignore::DeprecationWarning $(LAYER_TESTS)

lint:
	$(BIN)/ruff check swsl_cli tests benchmarks
	$(BIN)/ruff format --check swsl_cli tests benchmarks

train:
	$(BIN)/swsl-train $(DATA_FLAG) --logdir $(LOGDIR)

tensorboard:
	$(BIN)/tensorboard --logdir $(LOGDIR)

reproduce:
	$(BIN)/python benchmarks/reproduce.py $(DATA_FLAG) --logdir $(LOGDIR) $(if $(EPOCHS),--epochs $(EPOCHS),) \
		$(if $(SEEDS),--seeds $(SEEDS),)

bench:
	$(BIN)/python benchmarks/bench.py $(DATA_FLAG)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache bench-out
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
