# Two commands work on a fresh machine: `make speedrun` and `make test`. Both bootstrap .venv with the pinned
# dependencies of constraints.txt (pip, not uv/poetry: pip takes the local CPU build of torch==2.13.0).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-avx2 lint speedrun bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check nanoseek tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  # tests marked slow: the speed benchmarks end to end at their smallest settings (~3 min)
	$(BIN)/python -m pytest -q -m slow

test-avx2: $(STAMP)  # the suite on torch's AVX2 kernels: an AVX2-only CPU's rounding, checked on an AVX-512 one
	$(BIN)/python benchmarks/on_isa.py avx2 -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check nanoseek tests benchmarks
	$(BIN)/ruff format --check nanoseek tests benchmarks

speedrun: $(STAMP)
	$(BIN)/nanoseek speedrun --out runs/speedrun

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
