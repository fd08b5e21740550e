"""The HTTP routes. Each reads the app's shared pieces (settings, store, batcher, metrics) from
``request.app.state``, which the lifespan in :mod:`service.app` fills."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.admin import check_admin
from service.batching import NotReady
from service.errors import ApiError
from service.imaging import ImageLimits, decode_probed_all
from service.model_store import ModelStore, ReloadInProgress, ReloadTimeout, ServedModel, ShuttingDown
from service.parsing import FILE_FIELDS, body_kind, parse_and_probe, read_body
from service.responses import embeddings_body, l2_normalize
from service.schemas import EmbeddingResponse, ErrorResponse, ReloadResponse

router = APIRouter()

_SERIALISE_OFF_LOOP = 65_536  # floats in a response above which JSON writing moves to a thread
_ERRORS = {s: {"model": ErrorResponse} for s in (408, 413, 415, 422, 429, 503)}
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
    body = await read_body(request, settings.max_request_bytes, settings.body_timeout_s)

    decode_started = time.perf_counter()
    loop = asyncio.get_running_loop()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.max_decode_pixels)
    # Headers first: what decoding will cost is known (and checked) before a pixel is decoded.
    parsed, probed = await loop.run_in_executor(
        state.probe_pool, parse_and_probe, body, kind, content_type, model.spec,
        settings.max_images_per_request, limits, settings.max_request_decode_pixels)
    del body  # the probed images hold what they need
    cost = sum(p.cost for p in probed)
    state.batcher.ensure_room(len(probed))  # a full queue refuses before any decoding
    budget = state.decode_budget
    with budget.hold(cost):  # 429 at once when costly requests in flight have spent it
        # A cheap request decodes in the probe threads, right after its headers were read: it never queues
        # behind costly decodes in the decode threads.
        pool = state.probe_pool if budget.is_cheap(cost) else state.decode_pool
        images = await loop.run_in_executor(pool, decode_probed_all, probed, model.spec)
    decode_s = time.perf_counter() - decode_started

    out = await state.batcher.submit(images, model)
    rows = out.h if parsed.layer == "backbone" else out.z
    if parsed.normalize:
        rows = l2_normalize(rows)
    if rows.size > _SERIALISE_OFF_LOOP:
        content = await loop.run_in_executor(
            state.probe_pool, embeddings_body, rows, out.model, parsed.layer, parsed.encoding_format)
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
        "x-decode-pixels": str(cost),
        "x-model-name": lm.name or "",
        "x-model-version": lm.version or "",
    }
    return Response(content, media_type="application/json", headers=headers)


@router.get("/health", summary="text-embeddings-inference's health check: 200 once the model is loaded",
            responses={503: {"model": ErrorResponse}})
async def health(request: Request) -> dict:
    _current(request)
    return {"status": "ok"}


@router.get("/info", summary="text-embeddings-inference's model info: id, version, dimensions, limits",
            responses={503: {"model": ErrorResponse}})
async def info(request: Request) -> dict:
    served = _current(request)
    lm, settings = served.loaded, request.app.state.settings
    return {
        "model_id": lm.name or lm.uri,
        "model_sha": lm.run_id,
        "model_version": lm.version,
        "model_alias": lm.alias,
        "model_uri": lm.uri,
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": "none"}},
        "dims": served.dimensions,
        "max_input_length": served.spec.image_size,  # the side every image is resized to
        "input": {"image_size": served.spec.image_size, "channels": served.spec.channels},
        "max_concurrent_requests": settings.max_queue_images,
        "max_batch_tokens": settings.max_batch_size,  # images per forward pass
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_images_per_request,
        "max_image_bytes": settings.max_image_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "max_decode_pixels": settings.max_decode_pixels,
        "device": str(served.device),
        "version": request.app.version,
    }


@router.get("/v1/models", summary="The served model: version, run, lambda and form, data set, metrics",
            responses={503: {"model": ErrorResponse}})
async def models(request: Request) -> dict:
    return {"object": "list", "data": [_current(request).describe()]}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


@router.post("/admin/reload", summary="Load the model URI again and swap it in",
             response_model=ReloadResponse,
             responses={s: {"model": ErrorResponse} for s in (401, 403, 409, 503)})
async def reload(request: Request, force: bool = Query(
        False, description="reload even when the URI still points at the served version")) -> ReloadResponse:
    check_admin(request.app.state.settings, request.headers.get("authorization", ""))
    store = _store(request)
    served = store.current.loaded.version if store.current else None
    try:
        res = await store.reload(force=force)
    except ReloadInProgress as exc:
        raise ApiError(409, str(exc), type="reload_in_progress", headers={"Retry-After": "5"}) from exc
    except (ShuttingDown, asyncio.CancelledError) as exc:
        # uvicorn cancels what still runs when its graceful shutdown ends: an answer, not a 500.
        raise ApiError(503, f"the service is shutting down; still serving version {served}",
                       type="shutting_down") from exc
    except ReloadTimeout as exc:
        raise ApiError(503, f"{exc}; still serving version {served}", type="reload_timeout",
                       headers={"Retry-After": "10"}) from exc
    except Exception as exc:  # the registry is down, the alias is gone...: the old model keeps serving
        raise ApiError(503, f"reload of {store.uri} failed, still serving version {served}: "
                            f"{type(exc).__name__}: {exc}", type="reload_failed") from exc
    return ReloadResponse(changed=res.changed, previous=res.previous, current=res.current)
