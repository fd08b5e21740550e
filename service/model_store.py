"""The served model: loaded once at start-up, swapped whole on reload, never half-replaced.

A batch takes a reference to :attr:`ModelStore.current` when it forms and runs with it to the end, so
a reload (a plain reference swap after the new model is loaded and warmed up) never fails or mixes
versions for requests in flight.

A reload is bounded: its blocking work (registry look-up, download, warm-up) runs in the store's own
thread, one at a time; a second reload while one runs is refused at once (409 ``reload_in_progress``)
instead of waiting on a lock; a caller waits at most its deadline (503 ``reload_timeout``), after which
the load goes on in the background and is swapped in if it succeeds. MLflow's own HTTP timeout and
retries are set short for this process (:func:`pipeline.tracking.runs.bound_http_retries`), so a lost
tracking server fails a load in seconds rather than minutes of retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.data.decode import LIMITED_FORMATS
from pipeline.data.preprocess import InputSpec
from pipeline.device import resolve_device
from pipeline.embed import Embedder
from pipeline.tracking.registry import METRIC_TAG_PREFIX, LoadedModel, load_registered, resolve_model_uri
from service.errors import ApiError
from service.metrics import Metrics
from service.schemas import ModelRef

log = logging.getLogger(__name__)

Loader = Callable[[str], LoadedModel]


@dataclass
class ServedModel:
    """A loaded encoder ready for inference on its device, as one version of the service serves it."""

    loaded: LoadedModel
    embedder: Embedder
    loaded_at: float = field(default_factory=time.time)

    @property
    def device(self) -> torch.device:
        """Where the encoder runs."""
        return self.embedder.device

    @property
    def spec(self) -> InputSpec:
        """The input the encoder takes (side, channels)."""
        return self.loaded.encoder.spec.input

    @property
    def ref(self) -> ModelRef:
        """Name, version and alias, as answers name the model."""
        lm = self.loaded
        return ModelRef(name=lm.name, version=lm.version, alias=lm.alias)

    def answers_to(self, model: str) -> bool:
        """Whether a request's ``model`` names this one: its name, URI, name@alias or name/version."""
        lm = self.loaded
        names = {lm.name, lm.uri, f"{lm.name}@{lm.alias}", f"{lm.name}/{lm.version}"}
        return model in names - {None}

    @property
    def dimensions(self) -> dict[str, int]:
        """Embedding sizes by layer."""
        enc = self.loaded.encoder
        return {"backbone": enc.feature_dim, "projection": enc.projection_dim}

    def embed(self, images: np.ndarray, projection: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S, C) -> float32 h, and z with ``projection`` (:meth:`Embedder.embed`)."""
        return self.embedder.embed(images, projection)

    def describe(self) -> dict[str, object]:
        """The model card of ``/v1/models``: version, run, lambda and form, data set, input, metrics."""
        lm, tags = self.loaded, self.loaded.tags
        meta = lm.metadata or {}
        sparse = meta["sparsehead"] if isinstance(meta.get("sparsehead"), dict) else {}

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
            "id": lm.name or lm.uri,
            "owned_by": "sparsehead",
            "name": lm.name, "version": lm.version, "alias": lm.alias, "uri": lm.uri, "run_id": lm.run_id,
            "lambda": _number(pick("lambda", "sparsehead.lambda", default=sparse.get("lambda"))),
            "form": pick("form", "sparsehead.form", default=sparse.get("form")),
            "dataset": pick("dataset"), "dataset_sha256": pick("dataset_sha256", "sha256"),
            "git_commit": pick("git_commit"),
            "input": {"image_size": self.spec.image_size, "channels": self.spec.channels,
                      "format": f"an image file ({', '.join(LIMITED_FORMATS)}) or raw uint8 [H, W] / [H, W, C]; "
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
    """What a reload did: whether the served version changed, and the versions before and after."""

    changed: bool
    previous: str | None
    current: str | None


class ModelStore:
    """The served model and its reloads (see the module's docstring).

    Args:
        uri: the model URI (``models:/name@alias``, ``runs:/...``).
        tracking_uri: the MLflow tracking and registry URI.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        metrics: reload outcomes and the served model's labels.
        loader: ``loader(uri) -> LoadedModel`` (tests pass one that blocks or wraps it).
        reload_timeout_s: a reload's default deadline.
        freeze: serve frozen graphs of the encoder (:class:`pipeline.embed.Embedder`).
    """

    def __init__(self, uri: str, tracking_uri: str, device: str = "cpu", metrics: Metrics | None = None,
                 loader: Loader = load_registered, reload_timeout_s: float | None = None,
                 freeze: bool = True) -> None:
        self.uri = uri
        self.tracking_uri = tracking_uri
        self.device = resolve_device(device)
        self.metrics = metrics
        self.reload_timeout_s = reload_timeout_s
        self.freeze = freeze
        self._loader = loader
        self._current: ServedModel | None = None
        # One load at a time, in a thread of its own: requests never wait on it, and a load stuck on the
        # network never holds a lock anyone else needs.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._job: asyncio.Future | None = None
        self._closing = False
        self.last_error: str | None = None

    @property
    def current(self) -> ServedModel | None:
        """The served model, None before the first load."""
        return self._current

    def serving(self) -> ServedModel:
        """The served model.

        Raises:
            ApiError: 503 ``not_ready`` before the first load, with the last attempt's error.
        """
        model = self._current
        if model is None:
            why = f" (last attempt: {self.last_error})" if self.last_error else ""
            raise ApiError(503, "not_ready", f"the model {self.uri} is not loaded yet{why}", 5)
        return model

    @property
    def reloading(self) -> bool:
        """Whether a load runs now."""
        return self._job is not None and not self._job.done()

    def close(self) -> None:
        """Shutdown: no reload starts any more; a load still running is abandoned, never swapped in."""
        self._closing = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _load_blocking(self) -> ServedModel:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        loaded = self._loader(self.uri)
        served = ServedModel(loaded, Embedder(loaded.encoder, self.device, self.freeze))
        # Warm-up: the first forward pays one-off allocations; pay them before taking traffic.
        s = served.spec
        served.embed(np.zeros((1, s.image_size, s.image_size, s.channels), dtype=np.uint8))
        return served

    def _resolve_version_blocking(self) -> str | None:
        """The version the URI points at now (None when unknown, e.g. a runs:/ URI)."""
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return resolve_model_uri(self.uri, client).version

    def _fetch_blocking(self, force: bool, previous: str | None) -> ServedModel | None:
        """The new model, or None when the URI still points at ``previous`` (and not ``force``)."""
        if not force and previous is not None:
            target = self._resolve_version_blocking()
            if target is None or target == previous:
                return None
        return self._load_blocking()

    def _finish(self, job: asyncio.Future) -> None:
        # A done-callback, so the outcome is applied whether or not anyone still waits for it.
        if job.cancelled():
            return
        exc = job.exception()
        if exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.metrics:
                self.metrics.reloads.labels("error").inc()
            return
        served = job.result()
        if served is None or self._closing:
            return
        self._current = served  # the swap: one reference assignment
        self.last_error = None
        lm = served.loaded
        if self.metrics:
            self.metrics.reloads.labels("ok").inc()
            self.metrics.set_model(lm.name, lm.version, lm.alias)
        log.info("serving %s (name=%s version=%s) on %s", self.uri, lm.name, lm.version, self.device)

    async def reload(self, force: bool = True, timeout_s: float | None = -1.0) -> ReloadResult:
        """Load the URI's model and swap it in; without ``force``, only when the alias points elsewhere.

        Args:
            force: load even when the URI still points at the served version.
            timeout_s: the longest wait (default: the store's ``reload_timeout_s``; None: no deadline).

        Returns:
            Whether the served version changed, and the versions before and after.

        Raises:
            ApiError: 503 ``shutting_down`` when the service stops; 409 ``reload_in_progress`` when a
                reload runs already; 503 ``reload_timeout`` past the deadline (the load goes on).
            Exception: whatever the load raised (the registry is down, the alias is gone...).
        """
        previous = self._current.loaded.version if self._current else None
        if self._closing:
            raise ApiError(503, "shutting_down", f"the service is shutting down; still serving version {previous}")
        if self.reloading:
            raise ApiError(409, "reload_in_progress", f"a reload of {self.uri} is already in progress; retry when "
                                                      "it is done", 5)
        timeout = self.reload_timeout_s if timeout_s == -1.0 else timeout_s
        job = asyncio.get_running_loop().run_in_executor(self._executor, self._fetch_blocking, force, previous)
        self._job = job
        job.add_done_callback(self._finish)
        try:
            async with asyncio.timeout(timeout):
                served = await asyncio.shield(job)  # a deadline or a cancelled caller never cancels the load
        except TimeoutError:
            raise ApiError(503, "reload_timeout", f"the reload of {self.uri} did not finish within {timeout:g} s; "
                                                  "it goes on in the background and the new model is swapped in "
                                                  f"if it loads; still serving version {previous}", 10) from None
        current = self._current.loaded.version if self._current else None
        if served is None:
            return ReloadResult(False, previous, previous)
        return ReloadResult(previous != current or previous is None, previous, current)

    async def load_until_ready(self, first_retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        """Start-up: keep trying (the registry may not hold the model yet) until one load succeeds."""
        delay = first_retry_s
        while self._current is None:
            try:
                await self.reload(force=True, timeout_s=None)  # a first download may take long: no deadline
            except ApiError as exc:
                if exc.type == "shutting_down":
                    return
                raise  # no reload runs before the first one: not reached
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
            except ApiError as exc:
                if exc.type == "shutting_down":
                    return
                if exc.type != "reload_in_progress":  # an admin reload is on it
                    log.warning("poll of %s: %s", self.uri, exc.message)
            except (MlflowException, OSError, ValueError) as exc:
                log.warning("poll of %s failed, still serving version %s: %s", self.uri,
                            self._current.loaded.version if self._current else None, exc)
