# syntax=docker/dockerfile:1
# The SparseHead project in one image: the embedding service by default, the pipeline on demand.
#
#   CPU (the default; torch from the PyTorch CPU wheel index, so no CUDA libraries are pulled):
#     docker build -t sparsehead .
#   CUDA (a CUDA base image and the torch wheel index of the same CUDA major version; the wheels carry
#   their own CUDA runtime, the host needs the NVIDIA driver and container toolkit):
#     docker build -t sparsehead:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#
#   docker run --rm -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 sparsehead    # the service
#   docker run --rm --gpus all -p 8000:8000 sparsehead:cuda                              # ... on a GPU
#   docker run --rm sparsehead make run                                                  # the pipeline
#
# Configuration is by environment at run time (SERVE_*, MLFLOW_TRACKING_URI; see service/settings.py);
# nothing secret is baked in: pass SERVE_ADMIN_TOKEN with -e or a secret store. The image listens on
# 0.0.0.0, so without SERVE_ADMIN_TOKEN the admin routes (POST /admin/reload) are off: they answer 403 and
# the start-up log says so (service/app.py). Header size, header and body read times are bounded by
# the service itself (SERVE_MAX_HEADER_BYTES, SERVE_HEADER_TIMEOUT_S, SERVE_BODY_TIMEOUT_S). The health
# check asks /readyz: the container is healthy once the model serves. `tests/test_service_docker.py` lints
# this file with hadolint.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

# make and git for `make run` / `dvc repro`; a Python >= 3.11 with venv when the base has none (the CUDA
# images are plain Ubuntu: 24.04 brings 3.12). Debian's versions are the base image's own (not pinned);
# $pkgs is split into package names on purpose.
# hadolint ignore=DL3008,SC2086
RUN set -eux; \
    pkgs="make git ca-certificates"; \
    if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        pkgs="$pkgs python3 python3-venv"; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --create-home --uid 10001 --shell /bin/bash app; \
    mkdir /app; \
    chown app:app /app

USER 10001
WORKDIR /app

# The Makefile's virtualenv (VENV=.venv), so that `make run` / `make test` find it installed.
ENV VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH
RUN python3 -m venv /app/.venv

# Dependencies first (a layer that survives code changes). torch and torchvision come from the chosen
# wheel index, at the versions pyproject.toml pins (read from it, so the two cannot drift); everything
# else from PyPI, where the installed torch already satisfies the pin.
COPY --chown=app:app pyproject.toml README.md ./
RUN set -eux; \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(d for d in p["dependencies"] if d.split("==")[0] in ("torch", "torchvision")))' > /tmp/torch.txt; \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > /tmp/requirements.txt; \
    pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt; \
    pip install -r /tmp/requirements.txt; \
    python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

# The code; then the project itself, editable as `make setup` installs it, and the Makefile's stamp
# touched so that make does not reinstall.
COPY --chown=app:app . .
RUN set -eux; \
    pip install --no-deps -e .; \
    touch /app/.venv/.installed; \
    dvc config --local core.no_scm true

# Listen on every interface inside the container (admin routes need SERVE_ADMIN_TOKEN there); use the GPU
# when the container has one.
ENV SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8000 \
    SERVE_DEVICE=auto \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
EXPOSE 8000

# Healthy once the model is loaded and served (/readyz: 503 until then, and an HTTP error exits 1), not merely
# when the process answers (/healthz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SERVE_PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "service"]
