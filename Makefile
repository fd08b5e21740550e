# Two commands on a fresh machine: `make run` (set up + the whole pipeline on the embedded defaults)
# and `make test` (set up + lint + the test suite). Both are idempotent.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run baseline restore exps plots cifar10 test lint serve bench remote push pull postgres gpu-check

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
	@git diff --quiet HEAD -- dvc.lock 2>/dev/null || echo "This run is not your baseline yet: 'make baseline' commits its dvc.lock (README, Experiments)."

# The user's own baseline: this machine's run of the pipeline as a commit (dvc.lock; the outputs are in the
# local DVC cache), which `dvc exp show`, `dvc metrics diff` and every experiment start from. Only when the
# pipeline is up to date and no other tracked file differs from HEAD (the baseline is the code that ran).
baseline:
	@$(BIN)/dvc status -q || { echo "baseline: the pipeline is not up to date (dvc status): run 'make run' first"; exit 1; }
	@git diff --quiet HEAD -- . ':(exclude)dvc.lock' || { echo "baseline: tracked files other than dvc.lock differ from HEAD (git status): commit them first"; exit 1; }
	@if git diff --quiet HEAD -- dvc.lock; then echo "baseline: HEAD $$(git rev-parse --short HEAD) already is the baseline"; \
	 else git commit -q -m "Baseline: the pipeline's results on $$(hostname)" -- dvc.lock && echo "baseline: committed dvc.lock as $$(git rev-parse --short HEAD)"; fi

# After a failed or aborted `dvc exp run` in the workspace (it leaves its params in params.yaml and may have
# deleted outputs): params.yaml, dvc.lock and every output back to the baseline commit, from the DVC cache.
restore:
	git checkout HEAD -- params.yaml dvc.lock
	$(BIN)/dvc checkout --force

# Experiments side by side in 160 columns: lambda, test linear top-1 and head sparsity (README, Experiments);
# add columns with EXP_KEEP='<regex>' (a param such as pretrain.ssl.method, a metric such as rankme_z).
EXP_COLUMNS := ^(Experiment|Created)$$|^pretrain\.sparsehead\.lambda$$|^metrics/eval\.json:(test_linear_top1|head_sparsity)$$
exps:
	@$(BIN)/dvc exp show --no-pager --drop '.*' --keep '$(EXP_COLUMNS)$(if $(EXP_KEEP),|$(EXP_KEEP))'

# Every plot of the workspace as one HTML page that needs no network (.dvc/plots.html inlines Vega).
plots:
	$(BIN)/dvc plots show

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
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

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

# The GPU run prepared to the minute (README "The GPU check"): CUDA tests, throughput against a DataLoader
# pipeline and the measured bf16 peak, each GPU setting, a learning proxy; one table, raw figures in
# $(OUT)/gpu_check.json; 8 minutes at most on one H200. DRY=1: every step at tiny sizes on the CPU (the test
# suite runs it). BIN=/some/env/bin uses an environment the machine brings (no set-up then).
OUT ?= gpu-check
gpu-check: $(if $(filter $(VENV)/bin,$(BIN)),$(STAMP))
	$(BIN)/python bench/gpu_check.py --out $(OUT) $(if $(DRY),--dry)
