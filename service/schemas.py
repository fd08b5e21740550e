"""Request and response bodies (pydantic), shaped like OpenAI's embeddings API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Layer = Literal["backbone", "projection"]
EncodingFormat = Literal["float", "base64"]


class RawArray(BaseModel):
    """A raw uint8 image: its bytes in base64, row-major, and its shape."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="base64 of the raw bytes, row-major (H, W[, C])")
    shape: list[int] = Field(min_length=2, max_length=3, description="[H, W] or [H, W, C], C in 1..4")
    dtype: Literal["uint8"] = "uint8"


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str | RawArray] = Field(
        min_length=1, description="base64 of an encoded image file (PNG, JPEG, ...; a data: URL is fine) "
                                  "or a raw uint8 array object")
    layer: Layer = "backbone"
    normalize: bool = Field(False, description="L2-normalise each embedding")
    encoding_format: EncodingFormat = Field(
        "float", description="float: a list of numbers; base64: little-endian float32 bytes, as OpenAI's API")


class FormOptions(BaseModel):
    """The text fields of a multipart/form-data request (the images are its file parts)."""

    model_config = ConfigDict(extra="forbid")
    layer: Layer = "backbone"
    normalize: bool = False
    encoding_format: EncodingFormat = "float"


class ModelRef(BaseModel):
    name: str | None
    version: str | None
    alias: str | None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: ModelRef
    layer: Layer
    dimension: int
    count: int


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int
    index: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ReloadResponse(BaseModel):
    changed: bool
    previous: str | None
    current: str | None
