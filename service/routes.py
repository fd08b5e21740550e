"""The HTTP routes. Each reads the app's shared pieces (settings, store, batcher, metrics) from
``request.app.state``, which the lifespan in :mod:`service.app` fills."""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.batching import NotReady
from service.errors import ApiError
from service.imaging import ImageLimits
from service.model_store import ModelStore, ServedModel
from service.parsing import FILE_FIELDS, body_kind, parse_and_decode, read_body
from service.responses import embeddings_body, l2_normalize
from service.schemas import EmbeddingResponse, ErrorResponse, ReloadResponse

router = APIRouter()

_SERIALISE_OFF_LOOP = 65_536  # floats in a response above which JSON writing moves to a thread

_ERRORS = {s: {"model": ErrorResponse} for s in (413, 415, 422, 429, 503)}
_EMBEDDINGS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}},
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": f"image files (field names accepted: {', '.join(FILE_FIELDS)})"},
                    "layer": {"type": "string", "enum": ["backbone", "projection"], "default": "backbone"},
                    "normalize": {"type": "boolean", "default": False},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
                },
            }},
        },
    },
}


def _store(request: Request) -> ModelStore:
    return request.app.state.store


def _current(request: Request) -> ServedModel:
    store = _store(request)
    model = store.current
    if model is None:
        why = f" (last attempt: {store.last_error})" if store.last_error else ""
        raise NotReady(f"the model {store.uri} is not loaded yet{why}")
    return model


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


@router.get("/healthz", summary="Liveness: the process answers (the model may still be loading)")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 once the model is loaded, 503 before",
            responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> dict:
    lm = _current(request).loaded
    return {"status": "ready", "model": {"name": lm.name, "version": lm.version, "alias": lm.alias}}


@router.post("/v1/embeddings", summary="Embed images (JSON or multipart/form-data)",
             response_model=None, openapi_extra=_EMBEDDINGS_BODY,
             responses={200: {"model": EmbeddingResponse}, **_ERRORS})
async def embeddings(request: Request) -> Response:
    started = time.perf_counter()
    state = request.app.state
    settings = state.settings
    content_type = request.headers.get("content-type", "")
    kind = body_kind(content_type)  # 415 before reading a byte of the body
    model = _current(request)  # the images are decoded for this model's input, and embedded by it
    body = await read_body(request, settings.max_request_bytes)

    decode_started = time.perf_counter()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    parsed, images = await asyncio.get_running_loop().run_in_executor(
        state.decode_pool, parse_and_decode, body, kind, content_type, model.spec,
        settings.max_images_per_request, limits)
    decode_s = time.perf_counter() - decode_started

    out = await state.batcher.submit(images, model)
    rows = out.h if parsed.layer == "backbone" else out.z
    if parsed.normalize:
        rows = l2_normalize(rows)
    if rows.size > _SERIALISE_OFF_LOOP:
        content = await asyncio.get_running_loop().run_in_executor(
            state.decode_pool, embeddings_body, rows, out.model, parsed.layer, parsed.encoding_format)
    else:  # a thread hop costs more than writing a few thousand numbers
        content = embeddings_body(rows, out.model, parsed.layer, parsed.encoding_format)
    state.metrics.images.labels(parsed.layer).inc(len(rows))
    lm = out.model.loaded
    headers = {  # text-embeddings-inference's timing headers, in milliseconds
        "x-decode-time": _ms(decode_s),
        "x-queue-time": f"{out.queue_ms:.3f}",
        "x-inference-time": f"{out.inference_ms:.3f}",
        "x-total-time": _ms(time.perf_counter() - started),
        "x-batch-size": str(out.batch_size),
        "x-compute-images": str(len(rows)),
        "x-model-name": lm.name or "",
        "x-model-version": lm.version or "",
    }
    return Response(content, media_type="application/json", headers=headers)


@router.get("/v1/models", summary="The served model: version, run, lambda and form, data set, metrics",
            responses={503: {"model": ErrorResponse}})
async def models(request: Request) -> dict:
    return {"object": "list", "data": [_current(request).describe()]}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


@router.post("/admin/reload", summary="Load the model URI again and swap it in",
             response_model=ReloadResponse, responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def reload(request: Request, force: bool = Query(
        False, description="reload even when the URI still points at the served version")) -> ReloadResponse:
    token = request.app.state.settings.admin_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    store = _store(request)
    try:
        res = await store.reload(force=force)
    except Exception as exc:  # the registry is down, the alias is gone...: the old model keeps serving
        served = store.current.loaded.version if store.current else None
        raise ApiError(503, f"reload of {store.uri} failed, still serving version {served}: "
                            f"{type(exc).__name__}: {exc}", type="reload_failed") from exc
    return ReloadResponse(changed=res.changed, previous=res.previous, current=res.current)
