"""The served model: loaded once at start-up, swapped whole on reload, never half-replaced.

A batch takes a reference to :attr:`ModelStore.current` when it forms and runs with it to the end, so
a reload (a plain reference swap after the new model is loaded and warmed up) never fails or mixes
versions for requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.data.preprocess import to_model_input
from pipeline.device import resolve_device
from pipeline.registry import METRIC_TAG_PREFIX, LoadedModel, load_registered
from service.imaging import FORMATS
from service.metrics import Metrics

log = logging.getLogger(__name__)

Loader = Callable[[str], LoadedModel]


@dataclass
class ServedModel:
    loaded: LoadedModel
    device: torch.device
    loaded_at: float = field(default_factory=time.time)

    @property
    def spec(self):
        return self.loaded.encoder.spec.input

    @property
    def dimensions(self) -> dict[str, int]:
        enc = self.loaded.encoder
        return {"backbone": enc.feature_dim, "projection": enc.projection_dim}

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, C) -> float32 backbone h and projection z; the same path as
        :func:`pipeline.evaluation.features.extract_features` (to_model_input, eval-mode forward_both)."""
        enc = self.loaded.encoder
        with torch.inference_mode():
            x = to_model_input(images, enc.spec.input, self.device)
            h, z = enc.forward_both(x)
            return h.float().cpu().numpy(), z.float().cpu().numpy()

    def describe(self) -> dict:
        lm, tags = self.loaded, self.loaded.tags
        meta = lm.metadata or {}
        sparse = meta.get("sparsehead") if isinstance(meta.get("sparsehead"), dict) else {}

        def pick(*keys: str, default: object = None) -> object:
            for k in keys:
                if k in tags:
                    return tags[k]
                if k in meta:
                    return meta[k]
            return default

        metrics = {k[len(METRIC_TAG_PREFIX):]: _number(v) for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)}
        return {
            "object": "model",
            "name": lm.name, "version": lm.version, "alias": lm.alias, "uri": lm.uri, "run_id": lm.run_id,
            "lambda": _number(pick("lambda", "sparsehead.lambda", default=sparse.get("lambda"))),
            "form": pick("form", "sparsehead.form", default=sparse.get("form")),
            "dataset": pick("dataset"), "dataset_sha256": pick("dataset_sha256", "sha256"),
            "git_commit": pick("git_commit"),
            "input": {"image_size": self.spec.image_size, "channels": self.spec.channels,
                      "format": f"an image file ({', '.join(FORMATS)}) or raw uint8 [H, W] / [H, W, C]; "
                                f"resized to {self.spec.image_size}x{self.spec.image_size}x{self.spec.channels}"},
            "dimensions": self.dimensions,
            "metrics": metrics,
            "tags": dict(tags),
            "device": str(self.device),
            "loaded_at": self.loaded_at,
        }


def _number(v: object) -> object:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return v


@dataclass
class ReloadResult:
    changed: bool
    previous: str | None
    current: str | None


class ModelStore:
    def __init__(self, uri: str, tracking_uri: str, device: str = "cpu", metrics: Metrics | None = None,
                 loader: Loader = load_registered) -> None:
        self.uri = uri
        self.tracking_uri = tracking_uri
        self.device = resolve_device(device)
        self.metrics = metrics
        self._loader = loader
        self._current: ServedModel | None = None
        self._lock = asyncio.Lock()  # one load at a time; requests never wait on it
        self.last_error: str | None = None

    @property
    def current(self) -> ServedModel | None:
        return self._current

    def _load_blocking(self) -> ServedModel:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        loaded = self._loader(self.uri)
        loaded.encoder.to(self.device).eval()
        served = ServedModel(loaded, self.device)
        # Warm-up: the first forward pays one-off allocations; pay them before taking traffic.
        s = served.spec
        served.embed(np.zeros((1, s.image_size, s.image_size, s.channels), dtype=np.uint8))
        return served

    def _resolve_version_blocking(self) -> str | None:
        """The version the URI points at now (None when unknown, e.g. a runs:/ URI)."""
        if not self.uri.startswith("models:/"):
            return None
        rest = self.uri[len("models:/"):]
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            return str(client.get_model_version_by_alias(name, alias).version)
        name, _, ref = rest.rpartition("/")
        if ref.isdigit():
            return ref
        if name and ref == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            return str(max(int(v.version) for v in versions)) if versions else None
        return None

    async def reload(self, force: bool = True) -> ReloadResult:
        """Load the URI's model and swap it in; without ``force``, only when the alias points elsewhere."""
        async with self._lock:
            previous = self._current.loaded.version if self._current else None
            if not force and self._current is not None:
                target = await asyncio.to_thread(self._resolve_version_blocking)
                if target is None or target == previous:
                    return ReloadResult(False, previous, previous)
            try:
                served = await asyncio.to_thread(self._load_blocking)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.metrics:
                    self.metrics.reloads.labels("error").inc()
                raise
            self._current = served  # the swap: one reference assignment
            self.last_error = None
            lm = served.loaded
            if self.metrics:
                self.metrics.reloads.labels("ok").inc()
                self.metrics.set_model(lm.name, lm.version, lm.alias)
            log.info("serving %s (name=%s version=%s) on %s", self.uri, lm.name, lm.version, self.device)
            return ReloadResult(previous != lm.version or previous is None, previous, lm.version)

    async def load_until_ready(self, first_retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        """Start-up: keep trying (the registry may not hold the model yet) until one load succeeds."""
        delay = first_retry_s
        while self._current is None:
            try:
                await self.reload(force=True)
            except Exception as exc:  # logged and retried: /readyz reports it meanwhile
                log.error("cannot load %s (retrying in %.0f s): %s", self.uri, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_retry_s)

    async def poll(self, interval_s: float) -> None:
        """Follow the alias: reload when it moves (the configured poll)."""
        while True:
            await asyncio.sleep(interval_s)
            if self._current is None:
                continue
            try:
                res = await self.reload(force=False)
                if res.changed:
                    log.info("alias moved: version %s -> %s", res.previous, res.current)
            except (MlflowException, OSError, ValueError) as exc:
                log.warning("poll of %s failed, still serving version %s: %s", self.uri,
                            self._current.loaded.version if self._current else None, exc)
