# Set-up is two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The PyTorch build this project is tested with; override for another CUDA/CPU build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: venv test test-fast lint format demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks tools)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks tools)

format: $(STAMP)
	$(BIN)/ruff format src tests $(wildcard benchmarks tools)
	$(BIN)/ruff check --fix src tests $(wildcard benchmarks tools)

test: lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Offline it reads ../shared/data (the CIFAR-10 ResNets and MNIST); online it downloads what is missing.
demo: $(STAMP)
	$(BIN)/vprompt demo --output demo_out

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
