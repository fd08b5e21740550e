"""The FastAPI app: ``create_app(settings, loader=...)`` wires the model store, the request decoder, the
micro-batcher and the metrics together, and declares the routes.

The lifespan starts loading the model in the background and returns at once, so ``/healthz`` answers
from the first moment and ``/readyz`` says 503 until the model is in; everything bound to an event loop
(locks, queues, thread pools) is created there, so an app can be started more than once. ``/docs`` and
``/redoc`` are served with the Swagger UI and ReDoc files of the fastapi-offline package, so they work
offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.data.decode import DecodeLimits
from pipeline.device import resolve_device
from pipeline.tracking.registry import load_registered
from pipeline.tracking.runs import bound_http_retries
from service.batching import MicroBatcher
from service.decoding import Budget, ParsedRequest, RequestDecoder, body_kind, read_body
from service.errors import ApiError, ApiErrorHandler, install_error_handler
from service.metrics import Metrics, MetricsMiddleware
from service.model_store import Loader, ModelStore, ServedModel
from service.schemas import (
    EmbeddingForm,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ReloadResponse,
    embeddings_body,
    l2_normalize,
    request_body_openapi,
)
from service.settings import Settings, load_settings

log = logging.getLogger(__name__)

TITLE = "SparseHead embedding service"
VERSION = "0.1.0"
_SERIALISE_OFF_LOOP = 65_536  # floats in an answer above which JSON writing moves to a thread
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (404, 408, 413, 415, 422, 429, 503)}
# Requests that decode to at most this many pixels, or send at most this many body bytes, are never
# refused by the in-flight budgets (their own limits and the connection cap bound them).
CHEAP_DECODE_PIXELS = 1 << 20
CHEAP_BODY_BYTES = 1 << 16


@dataclass
class Wiring:
    """What the routes share for one run of the app (made by the lifespan)."""

    settings: Settings
    metrics: Metrics
    store: ModelStore
    bodies: Budget  # bytes of request bodies in flight
    decoder: RequestDecoder
    batcher: MicroBatcher
    embedding_requests: int = 0  # in flight (only the event loop touches it)

    @contextlib.contextmanager
    def embedding_request(self) -> Iterator[Callable[[], Awaitable[bool]]]:
        """Count one embeddings request in flight for the body of the ``with``.

        Yields:
            ``await alone()``: whether it is the only one in flight. Such a request is served on the event
            loop while its steps are bounded (:meth:`RequestDecoder.decode`, :meth:`MicroBatcher.submit`).
        """
        self.embedding_requests += 1

        async def alone() -> bool:
            if self.embedding_requests != 1:
                return False
            # A request runs from its start to its first real wait without yielding, so others may be
            # ready to start, or in the socket's buffer, and not counted yet: two passes of the loop let
            # the first kind start and the second be read and start (without them, 32 clients' PNGs were
            # each "alone" and went 1,169 -> 598 img/s, every forward pass on the loop).
            for _ in range(2):
                await asyncio.sleep(0)
            return self.embedding_requests == 1

        try:
            yield alone
        finally:
            self.embedding_requests -= 1


def create_app(settings: Settings | None = None, loader: Loader = load_registered) -> FastAPI:
    """The service's app.

    Args:
        settings: the configuration (default: :func:`service.settings.load_settings`).
        loader: ``loader(uri) -> LoadedModel`` fetches the model (tests pass one that blocks or wraps it).

    Raises:
        ValueError: a device this machine does not have.
    """
    settings = settings or load_settings()
    resolve_device(settings.device)  # a bad device fails here, not in the background load
    bound_http_retries(settings.registry_retries, settings.registry_timeout_s)
    if not settings.admin_enabled:
        log.warning("admin routes disabled: listening on %s without SERVE_ADMIN_TOKEN; POST /admin/reload "
                    "answers 403 (set SERVE_ADMIN_TOKEN to enable them)", settings.host)
    metrics = Metrics()
    embeddings_route = next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is embeddings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = ModelStore(settings.model_uri, settings.tracking_uri, settings.device, metrics, loader,
                           reload_timeout_s=settings.reload_timeout_s, freeze=settings.freeze_model)
        limits = DecodeLimits(settings.max_image_bytes, settings.max_image_pixels, settings.max_decode_pixels)
        pixels = Budget(settings.max_inflight_decode_pixels, CHEAP_DECODE_PIXELS, "pixels", "being decoded",
                        "decode_busy", metrics.decode_pixels)
        bodies = Budget(settings.inflight_body_bytes, CHEAP_BODY_BYTES, "bytes of request bodies", "held",
                        "upload_busy", metrics.body_bytes)
        decoder = RequestDecoder(settings.max_images_per_request, limits, settings.max_request_decode_pixels,
                                 pixels, settings.decode_workers)
        batcher = MicroBatcher(lambda: store.current, max_batch_size=settings.max_batch_size,
                               max_wait_ms=settings.max_wait_ms, max_queue_images=settings.max_queue_images,
                               workers=settings.workers, metrics=metrics,
                               inline_forward_ms=settings.inline_forward_ms)
        wiring = app.state.wiring = Wiring(settings, metrics, store, bodies, decoder, batcher)
        metrics.embedding_requests.set_function(lambda: wiring.embedding_requests)
        await batcher.start()
        tasks = [asyncio.create_task(store.load_until_ready(), name="model-load")]
        if settings.reload_poll_s:
            tasks.append(asyncio.create_task(store.poll(settings.reload_poll_s), name="model-poll"))
        try:
            yield
        finally:
            store.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await batcher.stop()
            decoder.close()

    app = FastAPI(title=TITLE, version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Image embeddings from the registered SparseHead encoder.")
    app.state.metrics = metrics
    on_api_error = install_error_handler(app, metrics)
    # The last added is the outermost: the metrics middleware counts the direct route's requests too.
    app.add_middleware(DirectRoute, route=embeddings_route, on_api_error=on_api_error)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.routes)
    app.include_router(router)  # before the docs: routes are matched in order, the busy ones first
    _add_docs(app)

    def openapi() -> dict[str, Any]:
        # The embeddings body is read by the route itself (JSON or multipart, bounded before parsing), so
        # FastAPI does not see its models: they are added from their declarations.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, defs = models_json_schema([(EmbeddingRequest, "validation"), (EmbeddingForm, "validation")],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class DirectRoute:
    """A plain ASGI middleware that sends one busy route's requests straight to its endpoint.

    ``POST /v1/embeddings`` reads and parses its own body and takes no parameter but the request, so
    FastAPI's machinery around it (routing through the included router, dependency solving, the exception
    and exit-stack middlewares) did nothing for it, yet was 39% of the event loop's busy time with 32
    clients sending small PNGs (py-spy on ``bench/serve.py --tiny``; the README has the figures). The
    route stays declared on the router, where FastAPI documents it and answers its other methods (405).
    Its :class:`ApiError` goes to the app's own handler; any other exception reaches the app's 500
    handler as before.

    Args:
        app: the ASGI app it wraps (the rest of the middleware stack and the router).
        route: the route served directly; its endpoint takes the :class:`Request` alone.
        on_api_error: the app's :class:`ApiError` handler (:func:`service.errors.install_error_handler`).
    """

    def __init__(self, app: ASGIApp, route: APIRoute, on_api_error: ApiErrorHandler) -> None:
        self.app = app
        self.route = route
        self.methods = route.methods or set()
        self.on_api_error = on_api_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in self.methods
                or scope["path"] != scope.get("root_path", "") + self.route.path):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # as FastAPI's routing would: the metrics label requests by it
        request = Request(scope, receive, send)
        try:
            response = await self.route.endpoint(request)
        except ApiError as exc:
            response = await self.on_api_error(request, exc)
        await response(scope, receive, send)


DOCS_ASSETS = "/docs-assets"


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI 5, which renders FastAPI's OpenAPI 3.1) and ``/redoc``, their scripts and
    styles served from the fastapi-offline package's files: nothing is fetched from a CDN."""
    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


# ------------------------------------------------------------------------------------------- routes

router = APIRouter()


def _wiring(request: Request) -> Wiring:
    wiring: Wiring = request.app.state.wiring
    return wiring


def _check_model(served: ServedModel, parsed: ParsedRequest) -> None:
    if parsed.model is not None and not served.answers_to(parsed.model):
        lm = served.loaded
        raise ApiError(404, "model_not_found", f"the model {parsed.model!r} does not exist here; this service "
                                               f"serves {lm.name or lm.uri} (version {lm.version})")


@router.get("/healthz", summary="Liveness: the process answers (the model may still be loading)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 once the model is loaded, 503 before",
            responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> dict[str, Any]:
    lm = _wiring(request).store.serving().loaded
    return {"status": "ready", "model": {"name": lm.name, "version": lm.version, "alias": lm.alias}}


@router.post("/v1/embeddings", summary="Embed images (JSON, OpenAI's shape included, or multipart/form-data)",
             response_model=None, openapi_extra={"requestBody": request_body_openapi()},
             responses={200: {"model": EmbeddingResponse}, **_ERRORS})
async def embeddings(request: Request) -> Response:
    started = time.perf_counter()
    w = _wiring(request)
    settings = w.settings
    content_type = request.headers.get("content-type", "")
    kind = body_kind(content_type)  # 415 before reading a byte of the body
    served = w.store.serving()  # the images are decoded for this model's input, and embedded by it
    with w.embedding_request() as alone:
        with w.bodies.hold() as held:  # until the body is parsed and its images decoded
            body = await read_body(request, settings.max_request_bytes, settings.body_timeout_s, held)
            decode_started = time.perf_counter()
            decoded = await w.decoder.decode(body, kind, content_type, served.spec,
                                             check=lambda parsed: _check_model(served, parsed),
                                             before_decoding=w.batcher.ensure_room,  # a full queue refuses first
                                             alone=alone)
            del body
        decode_s = time.perf_counter() - decode_started
        parsed = decoded.parsed
        out = await w.batcher.submit(decoded.images, served, projection=parsed.layer == "projection",
                                     inline=await alone())
    rows = out.z if parsed.layer == "projection" and out.z is not None else out.h
    if parsed.normalize:
        rows = l2_normalize(rows)
    lm = out.model.loaded
    model = (lm.name or lm.uri) if parsed.openai else out.model.ref
    if rows.size > _SERIALISE_OFF_LOOP:
        content = await asyncio.get_running_loop().run_in_executor(
            w.decoder.cheap_pool, embeddings_body, rows, model, parsed.layer, parsed.encoding_format)
    else:  # a thread hop costs more than writing a few thousand numbers
        content = embeddings_body(rows, model, parsed.layer, parsed.encoding_format)
    w.metrics.count_images(parsed.layer, len(rows))
    headers = {  # text-embeddings-inference's timing headers, in milliseconds
        "x-decode-time": f"{decode_s * 1000:.3f}",
        "x-queue-time": f"{out.queue_ms:.3f}",
        "x-inference-time": f"{out.inference_ms:.3f}",
        "x-total-time": f"{(time.perf_counter() - started) * 1000:.3f}",
        "x-batch-size": str(out.batch_size),
        "x-compute-images": str(len(rows)),
        "x-decode-pixels": str(decoded.cost),
        "x-model-name": lm.name or "",
        "x-model-version": lm.version or "",
    }
    return Response(content, media_type="application/json", headers=headers)


@router.get("/health", summary="text-embeddings-inference's health check: 200 once the model is loaded",
            responses={503: {"model": ErrorResponse}})
async def health(request: Request) -> dict[str, str]:
    _wiring(request).store.serving()
    return {"status": "ok"}


@router.get("/info", summary="text-embeddings-inference's model info: id, version, dimensions, limits",
            responses={503: {"model": ErrorResponse}})
async def info(request: Request) -> dict[str, Any]:
    w = _wiring(request)
    served, settings = w.store.serving(), w.settings
    lm = served.loaded
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
        "torch_threads": torch.get_num_threads(),  # intra-op threads of a forward pass (SERVE_TORCH_THREADS)
        "version": request.app.version,
    }


@router.get("/v1/models", summary="The served model: version, run, lambda and form, data set, metrics",
            responses={503: {"model": ErrorResponse}})
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_wiring(request).store.serving().describe()]}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


def check_admin(settings: Settings, authorization: str) -> None:
    """Let the caller use the admin routes, or refuse.

    With ``SERVE_ADMIN_TOKEN`` set, callers must send ``Authorization: Bearer <token>`` (compared in
    constant time). Without one, the routes are open only on a loopback address (see
    :attr:`Settings.admin_enabled`); the service still starts elsewhere, since embeddings need no token.

    Raises:
        ApiError: 401 for a missing or wrong token, 403 when the admin routes are off.
    """
    if settings.admin_token:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {settings.admin_token}".encode()):
            raise ApiError(401, None, "admin token missing or wrong: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
        return
    if not settings.admin_enabled:
        raise ApiError(403, "admin_disabled", f"admin routes are disabled: the service listens on {settings.host} "
                                              "and no SERVE_ADMIN_TOKEN is set")


@router.post("/admin/reload", summary="Load the model URI again and swap it in",
             response_model=ReloadResponse,
             responses={s: {"model": ErrorResponse} for s in (401, 403, 409, 503)})
async def reload(request: Request, force: bool = Query(
        False, description="reload even when the URI still points at the served version")) -> ReloadResponse:
    w = _wiring(request)
    check_admin(w.settings, request.headers.get("authorization", ""))
    store = w.store
    served = store.current.loaded.version if store.current else None
    try:
        res = await store.reload(force=force)
    except ApiError:
        raise
    except asyncio.CancelledError as exc:
        # uvicorn cancels what still runs when its graceful shutdown ends: an answer, not a 500.
        raise ApiError(503, "shutting_down", f"the service is shutting down; still serving version {served}") \
            from exc
    except Exception as exc:  # the registry is down, the alias is gone...: the old model keeps serving
        raise ApiError(503, "reload_failed", f"reload of {store.uri} failed, still serving version {served}: "
                                             f"{type(exc).__name__}: {exc}") from exc
    return ReloadResponse(changed=res.changed, previous=res.previous, current=res.current)
