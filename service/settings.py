"""Service settings: the ``serve`` section of params.yaml, then environment variables on top.

Every field can be overridden by ``SERVE_<FIELD>`` (e.g. ``SERVE_MODEL_URI``, ``SERVE_PORT``,
``SERVE_MAX_BATCH_SIZE``); the tracking URI comes from ``MLFLOW_TRACKING_URI`` or the pipeline's
``tracking.tracking_uri`` (the embedded ``sqlite:///mlflow.db``), exactly as the stages resolve it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, ServeConfig, load_params

ENV_PREFIX = "SERVE_"


class Settings(ServeConfig):
    # The fields below are the service's own, beyond params.yaml's ``serve`` section.
    tracking_uri: str = "sqlite:///mlflow.db"
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)  # whole HTTP body, before any parsing
    admin_token: str | None = None  # when set, /admin/reload needs "Authorization: Bearer <token>"
    torch_threads: int | None = Field(None, gt=0)  # intra-op threads; applied by `python -m service` only
    decode_workers: int = Field(min(4, os.cpu_count() or 1), gt=0)  # threads decoding images off the loop
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
        return self


def load_settings(params_path: str | Path | None = None, env: Mapping[str, str] | None = None,
                  **overrides: object) -> Settings:
    """params.yaml's ``serve`` section < ``SERVE_*`` / ``MLFLOW_TRACKING_URI`` < ``overrides``."""
    env = os.environ if env is None else env
    params_path = params_path or env.get(ENV_PREFIX + "PARAMS", "params.yaml")
    params = load_params(params_path)
    values: dict[str, object] = params.serve.model_dump()
    # From ``env`` only (not tracking_uri(), which reads os.environ), so an explicit env is the whole truth.
    values["tracking_uri"] = env.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
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
