"""Service settings: the ``serve`` section of params.yaml, then environment variables on top.

Every field can be overridden by ``SERVE_<FIELD>`` (e.g. ``SERVE_MODEL_URI``, ``SERVE_PORT``,
``SERVE_MAX_BATCH_SIZE``); the tracking URI comes from ``MLFLOW_TRACKING_URI`` or the pipeline's
``tracking.tracking_uri`` (the embedded ``sqlite:///mlflow.db``), exactly as the stages resolve it: a
relative local store is anchored at the project that holds the params file (``pipeline.stores``), so the
service finds the registry whatever folder it starts in.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, ServeConfig, load_params
from pipeline.stores import project_root
from pipeline.tracking.runs import anchored_uri

ENV_PREFIX = "SERVE_"


class Settings(ServeConfig):
    """Everything the service reads at start; see the module's docstring for where values come from."""

    # The fields below are the service's own, beyond params.yaml's ``serve`` section.
    tracking_uri: str = "sqlite:///mlflow.db"
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)  # whole HTTP body, before any parsing
    # Bodies all requests in flight may hold (past it: 429; unset: two full requests); bodies up to 64 KiB
    # are never refused there (see service.decoding.Budget).
    max_inflight_body_bytes: int | None = Field(None, gt=0)
    # When set, /admin/reload needs "Authorization: Bearer <token>"; unset, the admin routes are only
    # served on a loopback address (anywhere else they answer 403, see service.admin).
    admin_token: str | None = None
    # Intra-op threads of a forward pass, applied by `python -m service` only; None: torch's own default
    # (one per core). The default leaves the cores to the decoding threads and the event loop, and spares
    # a forward pass the wake-up of torch's other threads at each parallel region: on 2 cores, one thread
    # took 0.70 ms a forward pass at 1 client against 1.1-1.5 ms with two, and the same time in batches of
    # 14 (README, "The embedding service"). Raise it for a large model on many cores.
    torch_threads: int | None = Field(max(1, (os.cpu_count() or 1) // 4), gt=0)
    # Serve TorchScript-frozen graphs of the encoder (falling back to eager when they do not match it);
    # see service.model_store.freeze_for_inference.
    freeze_model: bool = True
    # A request alone in the service runs its forward pass on the event loop, sparing two thread hops, when
    # that model's last pass over a few images took at most this (0: never); see service.batching.
    inline_forward_ms: float = Field(2.0, ge=0)
    decode_workers: int = Field(min(4, os.cpu_count() or 1), gt=0)  # threads decoding images off the loop
    # Decode work, in decoded pixels (see service.decoding). max_image_pixels (params.yaml)
    # bounds what an image's header may claim; these bound what is really decoded: one image (a JPEG is
    # decoded at a reduced scale, so a 12-megapixel photo costs a fraction of this; a PNG, GIF, BMP,
    # TIFF, WebP... is decoded whole and must fit from its header), one request, and all requests in flight
    # (past it: 429).
    max_decode_pixels: int = Field(4_194_304, gt=0)  # 2048 x 2048
    max_request_decode_pixels: int = Field(33_554_432, gt=0)  # 8 such images
    max_inflight_decode_pixels: int = Field(67_108_864, gt=0)  # 2 such requests
    # The connection (see service.server): a request's header block, its header and body read times;
    # http: "guarded" (httptools with those limits) or "h11" (uvicorn's h11, its public size limit only).
    # max_connections: open connections (kept below the open-file limit; past it, one waiting for a request
    # is closed to make room, or 503).
    http: Literal["guarded", "h11"] = "guarded"
    max_connections: int = Field(1024, gt=0)
    max_header_bytes: int = Field(65_536, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    # Reloads: the whole reload's deadline (shorter than the 30 s graceful shutdown, so a reload in flight
    # at shutdown still answers), and MLflow's own HTTP timeout and retries for this process.
    reload_timeout_s: float = Field(20.0, gt=0, lt=30)
    registry_timeout_s: int = Field(5, ge=1)  # MLflow reads whole seconds
    registry_retries: int = Field(1, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True  # uvicorn's line per request

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _a_full_request_fits_the_queue(self) -> Settings:
        # Otherwise a request at the size limit would be refused with 429 forever.
        if self.max_queue_images < self.max_images_per_request:
            raise ValueError(f"max_queue_images ({self.max_queue_images}) must be >= max_images_per_request "
                             f"({self.max_images_per_request})")
        if self.inflight_body_bytes < self.max_request_bytes:
            raise ValueError(f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be >= "
                             f"max_request_bytes ({self.max_request_bytes})")
        # Likewise for the decode budgets: a request that fits the per-request budget must fit in flight.
        if not self.max_decode_pixels <= self.max_request_decode_pixels <= self.max_inflight_decode_pixels:
            raise ValueError(f"decode budgets must grow: max_decode_pixels ({self.max_decode_pixels}) <= "
                             f"max_request_decode_pixels ({self.max_request_decode_pixels}) <= "
                             f"max_inflight_decode_pixels ({self.max_inflight_decode_pixels})")
        return self

    @property
    def inflight_body_bytes(self) -> int:
        """The bytes of bodies all requests in flight may hold: ``max_inflight_body_bytes``, or two
        requests of ``max_request_bytes``."""
        return self.max_inflight_body_bytes or 2 * self.max_request_bytes

    @property
    def admin_enabled(self) -> bool:
        """Whether the admin routes answer: with a token, or on a loopback address only (where only the
        machine itself reaches them); elsewhere (the Docker image binds 0.0.0.0) they answer 403."""
        return bool(self.admin_token) or is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, localhost); a host name is not."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def load_settings(params_path: str | Path | None = None, env: Mapping[str, str] | None = None,
                  **overrides: object) -> Settings:
    """The service's settings: params.yaml's ``serve`` section < ``SERVE_*`` / ``MLFLOW_TRACKING_URI`` <
    ``overrides``.

    Args:
        params_path: the params file (default: ``SERVE_PARAMS`` or ``params.yaml``; a missing file gives
            the defaults).
        env: the environment to read (default: ``os.environ``); an explicit one is the whole truth.
        overrides: values that win over both (``python -m service --port``).

    Raises:
        ConfigError: a bad value, naming its key and its environment variable.
    """
    env = os.environ if env is None else env
    params_path = params_path or env.get(ENV_PREFIX + "PARAMS", "params.yaml")
    params = load_params(params_path)
    values: dict[str, object] = params.serve.model_dump()
    # From ``env`` only (not tracking_uri(), which reads os.environ), so an explicit env is the whole truth;
    # a relative local store is anchored where the stages anchor it: the project of the params file.
    uri = env.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    values["tracking_uri"] = anchored_uri(uri, project_root(env, Path(params_path).resolve().parent))
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            # An empty value means "unset" for the optional fields (e.g. SERVE_RELOAD_POLL_S=).
            values[name] = env[key] if env[key] != "" else None
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if not field:  # a check across fields
            raise ConfigError(f"serve settings: {first['msg']}") from exc
        raise ConfigError(f"serve setting {field} (params.yaml serve.{field} or {ENV_PREFIX}{field.upper()}): "
                          f"{first['msg']}") from exc
