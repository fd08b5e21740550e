# Two commands on a fresh machine: `make run` (set up + the whole pipeline on the embedded defaults)
# and `make test` (set up + lint + the test suite). Both are idempotent.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run cifar10 test lint serve bench remote push pull postgres

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
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -m pipeline.summary

# The CIFAR-10 GPU recipes as one DVC experiment each (downloads the archive once into data/raw/): solo-learn's
# per-method CIFAR configurations, ResNet-18 with the CIFAR stem, 200 epochs. recipes/cifar10/common.yaml,
# then recipes/cifar10/$(METHOD).yaml; README "SSL methods" has the table and its sources.
METHOD ?= simclr

cifar10: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipeline.recipes cifar10 $(METHOD) --run
	@$(BIN)/python -m pipeline.summary

# The tests start throwaway PostgreSQL clusters of their own (initdb + pg_ctl): install the server only
# when initdb is nowhere (PATH, or Debian's /usr/lib/postgresql/<v>/bin). Debian/Ubuntu; root or sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }

test: $(STAMP) postgres
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

serve: $(STAMP)
	$(BIN)/python -m service

# A DVC remote for the data and models (none ships: each lab has its own bucket and credentials), then
# commit .dvc/config so every clone knows it: make remote URL=s3://bucket/sparsehead (gs://..., ssh://...,
# or a shared folder; S3/GCS/SSH need pip install -e '.[s3]' / '.[gs]' / '.[ssh]').
remote: $(STAMP)
	@test -n "$(URL)" || { echo "usage: make remote URL=s3://bucket/path | gs://bucket/path | ssh://host/path | /a/folder"; exit 2; }
	$(BIN)/dvc remote add --default --force storage $(URL)

push: $(STAMP)
	$(BIN)/dvc push

# What a teammate runs instead of retraining: the pipeline's data and models, then `make run` does nothing.
pull: $(STAMP)
	$(BIN)/dvc pull

# Figures, not pass/fail: training and augmentation img/s, evaluation seconds, the service against
# `mlflow models serve` (needs a registered champion: `make run` first).
bench: $(STAMP)
	$(BIN)/python bench/train.py
	$(BIN)/python bench/pretrain_throughput.py --streaming
	$(BIN)/python bench/augment.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/serve.py --seconds 5
