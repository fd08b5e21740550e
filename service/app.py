"""The FastAPI app: ``create_app(settings, loader=...)`` wires the model store, the micro-batcher, the
decode threads, the metrics middleware and the error handlers together.

The lifespan starts loading the model in the background and returns at once, so ``/healthz`` answers
from the first moment and ``/readyz`` says 503 until the model is in; everything bound to an event
loop (locks, queues, thread pools) is created there, so an app can be started more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pipeline.device import resolve_device
from pipeline.tracking.registry import load_registered
from pipeline.tracking.runs import bound_http_retries
from service.admin import log_admin_state
from service.batching import MicroBatcher
from service.budget import DecodeBudget
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import MetricsMiddleware
from service.model_store import Loader, ModelStore
from service.routes import router
from service.schemas import EmbeddingRequest
from service.settings import Settings, load_settings

TITLE = "SparseHead embedding service"
VERSION = "0.1.0"


def create_app(settings: Settings | None = None, loader: Loader = load_registered) -> FastAPI:
    """``loader(uri) -> LoadedModel`` fetches the model (tests pass one that blocks or wraps it)."""
    settings = settings or load_settings()
    resolve_device(settings.device)  # a bad device fails here, not in the background load
    bound_http_retries(settings.registry_retries, settings.registry_timeout_s)
    log_admin_state(settings)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = ModelStore(settings.model_uri, settings.tracking_uri, settings.device, metrics, loader,
                           reload_timeout_s=settings.reload_timeout_s)
        batcher = MicroBatcher(lambda: store.current, max_batch_size=settings.max_batch_size,
                               max_wait_ms=settings.max_wait_ms, max_queue_images=settings.max_queue_images,
                               workers=settings.workers, metrics=metrics)
        # Two pools: request parsing, image headers and cheap decodes in one, costly decodes in the other,
        # so a flood of big images never queues in front of the small requests' work.
        probe_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="probe")
        decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        app.state.store, app.state.batcher = store, batcher
        app.state.probe_pool, app.state.decode_pool = probe_pool, decode_pool
        app.state.decode_budget = DecodeBudget(settings.max_inflight_decode_pixels, metrics=metrics)
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
            for pool in (probe_pool, decode_pool):
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=TITLE, version=VERSION, lifespan=lifespan,
                  description="Image embeddings from the registered SparseHead encoder.")
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app, metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.routes)
    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    # /v1/embeddings reads its body by hand (JSON or multipart); publish the JSON body's schema anyway.
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        body = EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["EmbeddingRequest"] = body
        app.openapi_schema = schema
    return app.openapi_schema
