"""Request and response bodies (pydantic), shaped like OpenAI's embeddings API; the OpenAPI document is
generated from these models, and :func:`embeddings_body` writes the answer straight from numpy."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import orjson
import pybase64
from pydantic import BaseModel, ConfigDict, Field, model_validator

Layer = Literal["backbone", "projection"]
EncodingFormat = Literal["float", "base64"]


class RawArray(BaseModel):
    """A raw uint8 image: its bytes in base64, row-major, and its shape."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="base64 of the raw bytes, row-major (H, W[, C])")
    shape: list[int] = Field(min_length=2, max_length=3, description="[H, W] or [H, W, C], C in 1..4")
    dtype: Literal["uint8"] = "uint8"


ImageItem = str | RawArray


class EmbeddingRequest(BaseModel):
    """A JSON request: today's ``images``, or OpenAI's ``input`` (and ``model``)."""

    model_config = ConfigDict(extra="forbid")
    images: list[ImageItem] | None = Field(
        None, min_length=1, description="base64 of an encoded image file (PNG, JPEG, ...; a data: URL is "
                                        "fine) or a raw uint8 array object")
    input: str | list[ImageItem] | None = Field(
        None, description="OpenAI's field: one image or a list, each base64 or a data: URL (or a raw array)")
    model: str | None = Field(None, description="the served model's name, URI, name@alias or name/version; "
                                                "another is a 404")
    layer: Layer = "backbone"
    normalize: bool = Field(False, description="L2-normalise each embedding")
    encoding_format: EncodingFormat = Field(
        "float", description="float: a list of numbers; base64: little-endian float32 bytes, as OpenAI's API")
    user: str | None = Field(None, description="OpenAI's end-user id; accepted and ignored")

    @model_validator(mode="after")
    def _one_list_of_images(self) -> EmbeddingRequest:
        if (self.images is None) == (self.input is None):
            raise ValueError("send the images in exactly one of 'images' or 'input'")
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input: should have at least 1 item")
        return self

    @property
    def items(self) -> list[ImageItem]:
        """The request's images in order, whichever field held them."""
        if self.images is not None:
            return self.images
        return [self.input] if isinstance(self.input, str) else list(self.input or [])


class EmbeddingForm(BaseModel):
    """A multipart/form-data request: the images are its file parts, the options its text fields."""

    model_config = ConfigDict(extra="forbid")
    files: list[bytes] = Field(default_factory=list, json_schema_extra={"items": {"format": "binary"}},
                               description="image files (parts named files, file, images or image)")
    model: str | None = None
    layer: Layer = "backbone"
    normalize: bool = False
    encoding_format: EncodingFormat = "float"


class ModelRef(BaseModel):
    """The model that computed an answer."""

    name: str | None
    version: str | None
    alias: str | None


class Embedding(BaseModel):
    """One image's embedding."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """OpenAI's token counts (images have none)."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(BaseModel):
    """The answer; ``model`` is the served model's name alone when the request used ``input``."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: ModelRef | str
    layer: Layer
    dimension: int
    count: int
    usage: Usage


class ErrorBody(BaseModel):
    """An error's fields."""

    message: str
    type: str
    code: int
    index: int | None = None


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {...}}``."""

    error: ErrorBody


class ReloadResponse(BaseModel):
    """The answer of ``POST /admin/reload``."""

    changed: bool
    previous: str | None
    current: str | None


def request_body_openapi() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/embeddings``: both bodies, by reference to the models."""
    return {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/EmbeddingForm"}},
    }}


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (rows of zeros stay zeros): float32 (N, D) -> float32 (N, D)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def embeddings_body(rows: np.ndarray, model: ModelRef | str, layer: str, encoding_format: str) -> bytes:
    """The JSON answer for float32 (N, D) ``rows``, written by orjson straight from the array.

    Args:
        rows: one embedding per image, in request order.
        model: the model that computed them (its name alone for OpenAI-shaped requests).
        layer: ``backbone`` or ``projection``.
        encoding_format: ``float`` (lists of numbers) or ``base64`` (little-endian float32 bytes).

    Returns:
        The UTF-8 JSON body of an :class:`EmbeddingResponse`.
    """
    rows = np.ascontiguousarray(rows, dtype="<f4")
    items: list[Any] = ([pybase64.b64encode_as_string(r.tobytes()) for r in rows]
                        if encoding_format == "base64" else list(rows))
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
        "model": model if isinstance(model, str) else model.model_dump(),
        "layer": layer,
        "dimension": int(rows.shape[1]),
        "count": int(rows.shape[0]),
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
