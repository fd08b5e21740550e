# Two commands on a fresh machine: `make run` (set up + the whole pipeline on the embedded defaults)
# and `make test` (set up + lint + the test suite). Both are idempotent.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint serve bench clean-outputs

# pip takes torch==2.14.1 / torchvision==0.29.1 from this machine's disk; the stamp re-runs the install
# only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# DVC runs each stage's `python -m stages.X` through the shell: the venv must come first on PATH.
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc metrics show

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

serve: $(STAMP)
	$(BIN)/python -m service

bench: $(STAMP)
	$(BIN)/python bench/train.py
	$(BIN)/python bench/augment.py
