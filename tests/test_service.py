"""The embedding service, end to end: a tiny encoder registered in a throwaway sqlite MLflow store, served
through FastAPI's TestClient, through httpx's ASGI transport (for concurrency) and by a real uvicorn
process on a free loopback port. Embeddings are compared with the evaluation's extract_features."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pipeline import tracking
from pipeline.config import ConfigError, RegisterConfig, TrackingConfig
from pipeline.data.preprocess import InputSpec, convert_channels
from pipeline.evaluation.features import Features, extract_features
from pipeline.models import Encoder, EncoderSpec
from pipeline.tracking.registry import LoadedModel, load_registered, log_encoder_model, register_encoder
from service.app import create_app
from service.settings import Settings, load_settings
from tests.servers import service_process

REPO = Path(__file__).resolve().parents[1]
NAME = "sparsehead-encoder"
RELOAD_NAME = "reload-encoder"  # the reload test moves this one's alias, so the others never see it move
SIDE = 8
WAIT_S = 180  # upper bound for any wait on a condition; never reached when things work

# Small limits, so that each can be crossed with a small request.
LIMITS = {"max_images_per_request": 8, "max_image_bytes": 50_000, "max_image_pixels": 1_000_000,
          "max_request_bytes": 1_000_000, "max_queue_images": 64}


# ------------------------------------------------------------------------------------------- the store

def tiny_encoder(seed: int) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(EncoderSpec("small", InputSpec(SIDE, 1, (0.3,), (0.4,)), width=8, head_hidden=[32],
                              head_out=16))
    enc.train()  # non-trivial batch-norm statistics, so a model that dropped its buffers would show
    with torch.no_grad():
        for _ in range(3):
            enc.project(torch.rand(32, 1, SIDE, SIDE))
    return enc.eval()


@dataclass
class Store:
    tracking_uri: str
    cfg: TrackingConfig
    model_uri: str  # models:/NAME@champion, version 1
    logged: list[str]  # model URIs of two logged encoders, for the reload test's registrations
    run_ids: list[str]
    images: np.ndarray  # uint8 (N, S, S, 1)
    want: Features  # extract_features of the registered champion over ``images``


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[Store]:
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)  # mlflow.set_registry_uri writes it; restored after
        cfg = TrackingConfig(experiment="test-service", tracking_uri=uri, artifact_root=str(tmp / "mlartifacts"))
        tracking.setup(cfg)
        logged, run_ids = [], []
        for seed in (0, 1):
            with tracking.start_run(cfg, run_name=f"encoder-{seed}") as run:
                logged.append(log_encoder_model(tiny_encoder(seed), metadata={"lambda": 0.001, "form": "l1"})
                              .model_uri)
                run_ids.append(run.info.run_id)
        register_encoder(logged[0], RegisterConfig(model_name=NAME), {"val_linear_top1": 0.8},
                         {"lambda": "0.001", "form": "l1", "dataset": "digits"})
        model_uri = f"models:/{NAME}@champion"
        images = np.random.default_rng(0).integers(0, 256, (5, SIDE, SIDE, 1), dtype=np.uint8)
        want = extract_features(load_registered(model_uri).encoder, images)
        yield Store(uri, cfg, model_uri, logged, run_ids, images, want)
        # The in-process loads pointed MLflow's globals here; later test modules must not inherit that.
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def make_settings(store: Store, tmp: Path | None = None, **overrides: object) -> Settings:
    # A params file that does not exist: the defaults, whatever the repository's params.yaml says.
    env = {"MLFLOW_TRACKING_URI": store.tracking_uri, "SERVE_MODEL_URI": store.model_uri,
           "SERVE_MAX_WAIT_MS": "1"}
    return load_settings(params_path="/nonexistent/params.yaml", env=env, **{**LIMITS, **overrides})


# ------------------------------------------------------------------------------------------ the images

def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw(arr: np.ndarray) -> dict:
    return {"data": b64(arr.tobytes()), "shape": list(arr.shape)}


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with one tiny IDAT: a few dozen bytes
    that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def embeddings(resp: httpx.Response) -> np.ndarray:
    body = resp.json()
    assert [d["index"] for d in body["data"]] == list(range(body["count"]))
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


# ------------------------------------------------------------------------------------------- helpers

def metric(text: str, sample_name: str, /, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_ready(get: Callable[[str], httpx.Response]) -> None:
    deadline = time.monotonic() + WAIT_S
    while get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.02)


async def wait_ready_async(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + WAIT_S
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "the model never loaded"
        await asyncio.sleep(0.01)


class Gate:
    """Wraps a loaded encoder so its forward pass waits until the gate opens: a request held in flight
    without any sleep. Open at first, so the load's warm-up pass goes through."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.entered.clear()
        self.open.clear()

    def wrap(self, loaded: LoadedModel) -> LoadedModel:
        inner = loaded.encoder.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            self.entered.set()
            if not self.open.wait(WAIT_S):
                raise TimeoutError("the test never opened the gate")
            return inner(x)

        loaded.encoder.forward = forward  # an instance attribute shadows the method
        return loaded


def good_request(store: Store) -> dict:
    return {"json": {"images": [b64(png(store.images[0]))]}}


def assert_serves(client: TestClient | httpx.Client, store: Store) -> None:
    r = client.post("/v1/embeddings", **good_request(store))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(embeddings(r)[0], store.want.h[0].numpy(), atol=1e-5)


def run_async(app: FastAPI, body: Callable[[httpx.AsyncClient], object]) -> None:
    """Run ``body(client)`` with the app's lifespan and an httpx client on its ASGI interface."""
    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=WAIT_S) as c:
                await wait_ready_async(c)
                await body(c)
    asyncio.run(main())


# ---------------------------------------------------------------------------------- TestClient tests

@pytest.fixture(scope="module")
def client(store) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store))) as c:
        wait_ready(c.get)
        yield c


def test_health_readiness_and_model_card(client, store):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model"] == {"name": NAME, "version": "1", "alias": "champion"}
    card = client.get("/v1/models").json()["data"][0]
    assert (card["name"], card["version"], card["alias"], card["uri"]) == (NAME, "1", "champion", store.model_uri)
    assert card["run_id"] == store.run_ids[0]
    assert (card["lambda"], card["form"], card["dataset"]) == (0.001, "l1", "digits")
    assert card["input"]["image_size"] == SIDE and card["input"]["channels"] == 1
    assert card["dimensions"] == {"backbone": store.want.h.shape[1], "projection": store.want.z.shape[1]}
    assert card["metrics"] == {"val_linear_top1": 0.8}


def test_embeddings_equal_the_evaluation_features_for_every_input_form(client, store):
    imgs, want = store.images, store.want.h.numpy()
    as_png = [b64(png(im)) for im in imgs]
    as_png[1] = "data:image/png;base64," + as_png[1]  # a data URL is fine too
    as_raw = [raw(im[:, :, 0]) if i % 2 else raw(im) for i, im in enumerate(imgs)]  # [H, W] and [H, W, 1]
    files = [("files", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(imgs)]
    for kwargs in ({"json": {"images": as_png}}, {"json": {"images": as_raw}}, {"files": files}):
        r = client.post("/v1/embeddings", **kwargs)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["count"], body["dimension"], body["layer"]) == (len(imgs), want.shape[1], "backbone")
        assert body["model"] == {"name": NAME, "version": "1", "alias": "champion"}
        np.testing.assert_allclose(embeddings(r), want, atol=1e-5)
        assert r.headers["x-model-version"] == "1" and r.headers["x-compute-images"] == str(len(imgs))
        for header in ("x-decode-time", "x-queue-time", "x-inference-time", "x-total-time"):
            assert float(r.headers[header]) >= 0.0


def test_projection_layer_normalize_and_base64(client, store):
    as_png = [b64(png(im)) for im in store.images]
    z = store.want.z.numpy()
    r = client.post("/v1/embeddings", json={"images": as_png, "layer": "projection"})
    assert r.status_code == 200 and r.json()["dimension"] == z.shape[1]
    np.testing.assert_allclose(embeddings(r), z, atol=1e-5)

    r = client.post("/v1/embeddings", json={"images": as_png, "layer": "projection", "normalize": True})
    unit = embeddings(r)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5)

    files = [("files", ("a.png", png(store.images[0]), "image/png"))]
    r = client.post("/v1/embeddings", files=files, data={"layer": "projection", "normalize": "true"})
    np.testing.assert_allclose(embeddings(r)[0], unit[0], atol=1e-5)

    r = client.post("/v1/embeddings", json={"images": as_png[:2], "encoding_format": "base64"})
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])
    np.testing.assert_allclose(decoded, store.want.h.numpy()[:2], atol=1e-5)


def test_other_sizes_and_colour_modes_go_through_the_library_preprocessing(client, store):
    rgb = np.random.default_rng(1).integers(0, 256, (3, 20, 13, 3), dtype=np.uint8)
    enc = load_registered(store.model_uri).encoder
    # What the evaluation computes for these pictures: library grey conversion, then its resize.
    want = extract_features(enc, np.stack([convert_channels(im, 1) for im in rgb])).h.numpy()
    for images in ([b64(png(im)) for im in rgb], [raw(im) for im in rgb]):
        r = client.post("/v1/embeddings", json={"images": images})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(embeddings(r), want, atol=1e-5)
    # Lossy or unusual encodings cannot be compared pixel for pixel; they must still embed.
    palette = Image.fromarray(rgb[0]).convert("P")
    others = [png(rgb[0], "JPEG"), png(rgb[0], "BMP"), png(rgb[0], "GIF")]
    for img in (palette, Image.fromarray(rgb[1]).convert("CMYK"), Image.fromarray(rgb[2], "RGB").convert("LA")):
        buf = io.BytesIO()
        img.save(buf, "TIFF")
        others.append(buf.getvalue())
    r = client.post("/v1/embeddings", json={"images": [b64(x) for x in others]})
    assert r.status_code == 200, r.text
    assert embeddings(r).shape == (len(others), store.want.h.shape[1]) and np.isfinite(embeddings(r)).all()


def _noise_png(side: int) -> bytes:
    return png(np.random.default_rng(2).integers(0, 256, (side, side, 3), dtype=np.uint8))


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buf, "PNG")  # 16 million pixels in about 2 kB
    return buf.getvalue()


def _form(n: int, **data: str) -> dict:
    img = png(np.zeros((SIDE, SIDE, 1), np.uint8))
    return {"files": [("files", (f"{i}.png", img, "image/png")) for i in range(n)], "data": data}


def _json(images: list, **extra: object) -> dict:
    return {"json": {"images": images, **extra}}


GOOD = b64(png(np.zeros((SIDE, SIDE, 1), np.uint8)))
BAD_INPUTS = {
    # name: (request kwargs, status, words in the message, index of the bad image)
    "corrupt image": (_json([GOOD, b64(b"\x89PNG\r\n\x1a\n not really a png"), GOOD]), 422, ["image 1"], 1),
    "truncated png": (_json([b64(png(np.full((SIDE, SIDE, 1), 7, np.uint8))[:-30])]), 422,
                      ["image 0", "truncated"], 0),
    "not an image": (_json([GOOD, GOOD, b64(b"hello world")]), 422, ["image 2", "format"], 2),
    "postscript refused": (_json([b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n")]), 422,
                           ["image 0", "format"], 0),
    "not base64": (_json([GOOD, "%%%not-base64%%%"]), 422, ["image 1", "base64"], 1),
    "neither string nor array": (_json([GOOD, 42]), 422, ["image 1", "base64 string or a raw array"], 1),
    "raw bytes do not match shape": (_json([raw(np.zeros((4, 4), np.uint8)) | {"shape": [5, 5]}]), 422,
                                     ["image 0", "do not match shape"], 0),
    "raw array of too many channels": (_json([raw(np.zeros((2, 2, 5), np.uint8))]), 422, ["channel"], 0),
    "too many images": (_json([GOOD] * 9), 413, ["too many images", "9", "8"], None),
    "too many files": (_form(9), 413, ["too many images", "9"], None),
    "image too large in bytes": (_json([GOOD, b64(_noise_png(150))]), 413, ["image 1", "bytes"], 1),
    "uploaded file too large in bytes": ({"files": [("files", ("n.png", _noise_png(150), "image/png"))]}, 413,
                                         ["image 0", "bytes"], 0),
    "decompression bomb": (_json([b64(_bomb_png())]), 413, ["image 0", "4000x4000", "pixels"], 0),
    "forged header of 10^10 pixels": (_json([GOOD, b64(png_header_only(100_000, 100_000))]), 413,
                                      ["image 1", "pixels"], 1),
    "raw array of too many pixels": (_json([{"data": "AAAA", "shape": [100_000, 100_000]}]), 413,
                                     ["image 0", "pixels"], 0),
    "body too large": (_json(["A" * 1_100_000]), 413, ["request body", "1000000"], None),
    "chunked body too large": ({"content": iter([b'{"images": ["' + b"A" * 600_000, b"A" * 600_000 + b'"]}']),
                                "headers": {"content-type": "application/json"}}, 413, ["request body"], None),
    "plain text": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
                   ["text/plain", "application/json"], None),
    "urlencoded form": ({"data": {"images": GOOD}}, 415, ["x-www-form-urlencoded"], None),
    "no content type": ({"content": b'{"images": []}'}, 415, ["no Content-Type"], None),
    "malformed json": ({"content": b'{"images": ["abc"', "headers": {"content-type": "application/json"}}, 422,
                       ["malformed JSON"], None),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 422, ["empty body"], None),
    "json array, not object": ({"json": [GOOD]}, 422, ["valid dictionary"], None),
    "no images": (_json([]), 422, ["images", "at least 1"], None),
    "unknown field": (_json([GOOD], colour="red"), 422, ["colour", "Extra inputs"], None),
    "bad layer": (_json([GOOD], layer="penultimate"), 422, ["layer", "backbone", "projection"], None),
    "bad normalize": (_json([GOOD], normalize="maybe"), 422, ["normalize"], None),
    "bad layer in a form": (_form(1, layer="penultimate"), 422, ["layer"], None),
    "unknown form field": (_form(1, colour="red"), 422, ["colour"], None),
    "form without files": ({"files": [("layer", (None, "backbone"))]}, 422, ["no images"], None),
    "truncated multipart": ({"content": b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\""
                                        b"\r\n\r\nabc", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
                            422, ["multipart"], None),
    "multipart without boundary": ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 422,
                                   ["boundary"], None),
    "multipart boundary over 256 characters": ({"content": b"--" + b"b" * 300 + b"--\r\n", "headers": {
        "content-type": "multipart/form-data; boundary=" + "b" * 300}}, 422, ["multipart", "256"], None),
    "raw array shape of 2,200-digit integers": ({"content": b'{"images": [{"data": "AAAA", "shape": [' +
                                                 b"9" * 2200 + b", " + b"9" * 2200 + b"]}]}",
                                                 "headers": {"content-type": "application/json"}}, 422,
                                                ["malformed JSON"], None),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_message_and_the_next_request_succeeds(client, store, case):
    kwargs, status, words, index = BAD_INPUTS[case]
    r = client.post("/v1/embeddings", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == status and err["type"]
    for word in words:
        assert word in err["message"], err
    assert err.get("index") == index, err
    assert_serves(client, store)


def test_unknown_routes_and_methods_are_json_errors(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/v1/embeddings")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405
    r = client.post("/admin/reload?force=banana")
    assert r.status_code == 422 and "force" in r.json()["error"]["message"]


def test_openapi_documents_both_request_bodies(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    schemas = spec["components"]["schemas"]
    for ref in body.values():  # every reference resolves to a declared model
        assert ref["schema"]["$ref"].rsplit("/", 1)[1] in schemas
    assert {"images", "input", "model", "layer"} <= set(schemas["EmbeddingRequest"]["properties"])
    assert {"files", "layer", "normalize"} <= set(schemas["EmbeddingForm"]["properties"])
    assert "RawArray" in schemas


def test_the_docs_pages_load_nothing_from_outside(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html) + re.findall(r"""url: ?["']([^"']+)""", html)
        assert urls and all(u.startswith("/") for u in urls), urls  # served here, never from a CDN
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200 and len(r.content) > 100, url
    js = client.get("/docs-assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in js  # Swagger UI 5: renders the OpenAPI 3.1 document FastAPI writes


def test_metrics_count_requests_by_route_and_status(store):
    with TestClient(create_app(make_settings(store))) as c:
        wait_ready(c.get)
        for _ in range(2):
            assert c.post("/v1/embeddings", json={"images": [GOOD, GOOD, GOOD]}).status_code == 200
        assert c.post("/v1/embeddings", json={"images": [GOOD], "layer": "x"}).status_code == 422
        assert c.post("/v1/embeddings", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
        assert c.get("/v2/nothing").status_code == 404
        text = c.get("/metrics").text
    post = {"route": "/v1/embeddings", "method": "POST"}
    assert metric(text, "embedding_requests_total", **post, status="200") == 2
    assert metric(text, "embedding_requests_total", **post, status="422") == 1
    assert metric(text, "embedding_requests_total", **post, status="415") == 1
    assert metric(text, "embedding_requests_total", route="unmatched", status="404") == 1
    assert metric(text, "embedding_request_duration_seconds_count", route="/v1/embeddings") == 4
    assert metric(text, "embedding_images_total", layer="backbone") == 6
    assert metric(text, "embedding_batch_size_sum") == 6  # the load's warm-up pass is not a batch
    assert metric(text, "embedding_rejected_total", reason="unsupported_media_type") == 1
    assert metric(text, "embedding_model_info", name=NAME, version="1", alias="champion") == 1
    assert metric(text, "embedding_model_reloads_total", outcome="ok") == 1


def test_a_failed_forward_pass_is_a_json_500_counted_under_its_route_and_the_next_request_succeeds(store):
    # POST /v1/embeddings is served past FastAPI's routing (service.app.DirectRoute): a bug in it must
    # still reach the app's 500 handler, in the error shape, and be counted under the route's template.
    fail_next = threading.Event()

    def loader(uri: str) -> LoadedModel:
        loaded = load_registered(uri)
        inner = loaded.encoder.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if fail_next.is_set():
                fail_next.clear()
                raise RuntimeError("a forward pass that fails")
            return inner(x)

        loaded.encoder.forward = forward
        return loaded

    app = create_app(make_settings(store, max_wait_ms=0, freeze_model=False), loader=loader)  # forward as wrapped
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c.get)
        fail_next.set()
        r = c.post("/v1/embeddings", **good_request(store))
        assert r.status_code == 500, r.text
        assert r.json() == {"error": {"message": "internal error (RuntimeError); see the service log",
                                      "type": "server_error", "code": 500}}
        assert_serves(c, store)
        text = c.get("/metrics").text
    post = {"route": "/v1/embeddings", "method": "POST"}
    assert metric(text, "embedding_requests_total", **post, status="500") == 1
    assert metric(text, "embedding_requests_total", **post, status="200") == 1
    assert metric(text, "embedding_rejected_total", reason="server_error") == 1


def test_readyz_is_503_until_the_model_has_loaded(store):
    release = threading.Event()

    def slow_loader(uri: str) -> LoadedModel:
        if not release.wait(WAIT_S):
            raise TimeoutError("never released")
        return load_registered(uri)

    try:
        with TestClient(create_app(make_settings(store), loader=slow_loader)) as c:
            assert c.get("/healthz").status_code == 200  # the process is alive at once
            for path in ("/readyz", "/v1/models"):
                r = c.get(path)
                assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready", r.text
                assert "not loaded yet" in r.json()["error"]["message"]
            r = c.post("/v1/embeddings", **good_request(store))
            assert r.status_code == 503 and r.headers["retry-after"]
            release.set()
            wait_ready(c.get)
            assert_serves(c, store)
    finally:
        release.set()  # never leave the loader thread waiting


def test_admin_reload_needs_the_token_when_one_is_set(store):
    with TestClient(create_app(make_settings(store, admin_token="s3cret"))) as c:
        wait_ready(c.get)
        for headers in ({}, {"authorization": "Bearer wrong"}):
            r = c.post("/admin/reload", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = c.post("/admin/reload", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json() == {"changed": False, "previous": "1", "current": "1"}


def test_settings_come_from_the_environment_and_are_checked(store):
    env = {"SERVE_MAX_BATCH_SIZE": "16", "SERVE_MODEL_URI": "models:/x@y", "MLFLOW_TRACKING_URI": "sqlite:///a.db",
           "SERVE_RELOAD_POLL_S": "", "SERVE_ADMIN_TOKEN": "t"}
    s = load_settings(params_path="/nonexistent/params.yaml", env=env)
    assert (s.max_batch_size, s.model_uri, s.tracking_uri, s.reload_poll_s, s.admin_token) == \
        (16, "models:/x@y", "sqlite:////nonexistent/a.db", None, "t")  # anchored at the params' project
    assert load_settings(params_path="/nonexistent/params.yaml",
                         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}).tracking_uri == "http://127.0.0.1:5000"
    assert load_settings(params_path="/nonexistent/params.yaml", env={}).model_uri == store.model_uri
    for value, threads in (("3", 3), ("", None)):  # None: torch's own default
        assert load_settings(params_path="/nonexistent/params.yaml",
                             env={"SERVE_TORCH_THREADS": value}).torch_threads == threads
    with pytest.raises(ConfigError, match="SERVE_MAX_BATCH_SIZE"):
        load_settings(params_path="/nonexistent/params.yaml", env={"SERVE_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match="max_queue_images"):
        load_settings(params_path="/nonexistent/params.yaml", env={}, max_queue_images=4)


# ------------------------------------------------------------------------ concurrency (ASGI transport)

def test_concurrent_requests_are_batched_into_one_forward_pass(store):
    # The batch forms when 16 images are queued; the wait is long enough never to fire first.
    app = create_app(make_settings(store, max_batch_size=16, max_wait_ms=WAIT_S * 1000, max_images_per_request=16))
    imgs = np.random.default_rng(3).integers(0, 256, (16, SIDE, SIDE, 1), dtype=np.uint8)
    want = extract_features(load_registered(store.model_uri).encoder, imgs).h.numpy()

    async def body(c: httpx.AsyncClient) -> None:
        before = metric((await c.get("/metrics")).text, "embedding_batch_size_count")
        rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"images": [b64(png(im))]}) for im in imgs))
        for i, r in enumerate(rs):
            assert r.status_code == 200, r.text
            assert r.headers["x-batch-size"] == "16"
            np.testing.assert_allclose(embeddings(r)[0], want[i], atol=1e-5)  # each gets its own row back
        text = (await c.get("/metrics")).text
        assert metric(text, "embedding_batch_size_count") == before + 1
        assert metric(text, "embedding_batch_size_sum") == 16
        assert metric(text, "embedding_batch_size_bucket", le="8.0") == 0  # the batch is > 8
        assert metric(text, "embedding_images_total", layer="backbone") == 16

    run_async(app, body)


def test_a_request_alone_is_embedded_on_the_event_loop_and_concurrent_ones_never_take_themselves_for_alone(store):
    # Alone, once a small pass is measured, a request's forward pass runs on the loop: no queue time. A
    # request runs from its start to its first real wait without yielding, so the first of many concurrent
    # ones would count itself alone unless the loop passes first: it then ran its pass on the loop, in a
    # batch of one (32 clients' PNGs went 1,169 -> 598 img/s).
    app = create_app(make_settings(store, max_wait_ms=0, inline_forward_ms=10_000))  # whatever the load

    async def body(c: httpx.AsyncClient) -> None:
        first = await c.post("/v1/embeddings", json={"images": [GOOD]})  # measures the model's small pass
        alone = await c.post("/v1/embeddings", json={"images": [GOOD]})
        assert first.status_code == alone.status_code == 200
        assert float(first.headers["x-queue-time"]) > 0 and alone.headers["x-queue-time"] == "0.000"
        np.testing.assert_allclose(embeddings(alone), embeddings(first), atol=1e-6)
        for _ in range(3):
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"images": [GOOD]}) for _ in range(8)))
            assert [r.status_code for r in rs] == [200] * 8
            assert all(float(r.headers["x-queue-time"]) > 0 for r in rs), [r.headers["x-queue-time"] for r in rs]
        assert metric((await c.get("/metrics")).text, "embedding_requests_in_flight") == 0

    run_async(app, body)


def test_past_the_queue_limit_requests_get_429_and_the_service_recovers(store):
    gate = Gate()
    # freeze_model=False: the gate is in the eager forward, which a frozen graph would not call
    app = create_app(make_settings(store, max_queue_images=2, max_images_per_request=2, max_batch_size=1,
                                   max_wait_ms=0, freeze_model=False),
                     loader=lambda uri: gate.wrap(load_registered(uri)))

    async def body(c: httpx.AsyncClient) -> None:
        gate.close()
        held = asyncio.create_task(c.post("/v1/embeddings", **good_request(store)))
        assert await asyncio.to_thread(gate.entered.wait, WAIT_S)  # one image in a running forward pass
        assert (await c.get("/healthz")).status_code == 200  # the loop is free while torch works
        r = await c.post("/v1/embeddings", json={"images": [GOOD, GOOD]})  # 1 + 2 > 2
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "queue_full" and "limit 2" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
        text = (await c.get("/metrics")).text
        assert metric(text, "embedding_queue_images") == 1
        assert metric(text, "embedding_requests_in_flight") == 1  # the held one; the 429 is answered
        gate.open.set()
        r = await held
        assert r.status_code == 200, r.text
        r = await c.post("/v1/embeddings", json={"images": [GOOD, GOOD]})
        assert r.status_code == 200, r.text
        text = (await c.get("/metrics")).text
        assert metric(text, "embedding_rejected_total", reason="queue_full") == 1
        assert metric(text, "embedding_requests_in_flight") == 0

    try:
        run_async(app, body)
    finally:
        gate.open.set()


def test_reload_swaps_to_the_new_champion_without_failing_requests_in_flight(store):
    cfg = RegisterConfig(model_name=RELOAD_NAME)
    register_encoder(store.logged[0], cfg, {"val_linear_top1": 0.5}, {"lambda": "0.001"})
    uri = f"models:/{RELOAD_NAME}@champion"
    want_v1 = extract_features(load_registered(uri).encoder, store.images).h.numpy()
    gate = Gate()
    loads = []

    def loader(u: str) -> LoadedModel:
        loads.append(u)
        loaded = load_registered(u)
        return gate.wrap(loaded) if len(loads) == 1 else loaded  # only version 1 can be held

    app = create_app(make_settings(store, model_uri=uri, max_wait_ms=0, workers=1, freeze_model=False), loader=loader)

    async def body(c: httpx.AsyncClient) -> None:
        gate.close()
        payload = {"json": {"images": [b64(png(im)) for im in store.images]}}
        running = asyncio.create_task(c.post("/v1/embeddings", **payload))
        assert await asyncio.to_thread(gate.entered.wait, WAIT_S)
        queued = asyncio.create_task(c.post("/v1/embeddings", **payload))
        deadline = time.monotonic() + WAIT_S
        while app.state.wiring.batcher.outstanding_images < 2 * len(store.images):  # the second one is queued
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)

        res = await asyncio.to_thread(register_encoder, store.logged[1], cfg, {"val_linear_top1": 0.9}, {})
        assert res.promoted and res.version == "2"
        r = await c.post("/admin/reload")
        assert r.status_code == 200 and r.json() == {"changed": True, "previous": "1", "current": "2"}
        assert (await c.get("/v1/models")).json()["data"][0]["version"] == "2"
        assert (await c.get("/readyz")).json()["model"]["version"] == "2"
        assert (await c.post("/admin/reload")).json()["changed"] is False  # the alias did not move again

        gate.open.set()
        for task in (running, queued):  # started on version 1, finished on version 1
            r = await task
            assert r.status_code == 200, r.text
            assert r.json()["model"]["version"] == "1" and r.headers["x-model-version"] == "1"
            np.testing.assert_allclose(embeddings(r), want_v1, atol=1e-5)

        want_v2 = await asyncio.to_thread(
            lambda: extract_features(load_registered(uri).encoder, store.images).h.numpy())
        r = await c.post("/v1/embeddings", **payload)
        assert r.status_code == 200 and r.json()["model"]["version"] == "2"
        np.testing.assert_allclose(embeddings(r), want_v2, atol=1e-5)
        assert not np.allclose(want_v1, want_v2, atol=1e-3)
        text = (await c.get("/metrics")).text
        assert metric(text, "embedding_model_reloads_total", outcome="ok") == 2
        assert metric(text, "embedding_model_info", version="2") == 1

    try:
        run_async(app, body)
    finally:
        gate.open.set()


def test_a_configured_poll_follows_the_alias(store):
    cfg = RegisterConfig(model_name="poll-encoder")
    register_encoder(store.logged[0], cfg, {"val_linear_top1": 0.5}, {})
    uri = "models:/poll-encoder@champion"
    with TestClient(create_app(make_settings(store, model_uri=uri, reload_poll_s=0.05))) as c:
        wait_ready(c.get)
        assert c.get("/readyz").json()["model"]["version"] == "1"
        register_encoder(store.logged[1], cfg, {"val_linear_top1": 0.9}, {})
        deadline = time.monotonic() + WAIT_S
        while c.get("/readyz").json()["model"]["version"] != "2":
            assert time.monotonic() < deadline, "the poll never picked up version 2"
            time.sleep(0.02)
        want = extract_features(load_registered(uri).encoder, store.images[:1]).h.numpy()
        r = c.post("/v1/embeddings", **good_request(store))
        assert r.json()["model"]["version"] == "2"
        np.testing.assert_allclose(embeddings(r), want, atol=1e-5)


# ------------------------------------------------------------------------------ a real uvicorn process

@pytest.fixture()
def server(store, tmp_path) -> Iterator[str]:
    log = tmp_path / "server.log"
    with service_process(store.tracking_uri, store.model_uri, log, {"SERVE_MAX_IMAGES_PER_REQUEST": "8"},
                         start_s=WAIT_S) as (port, proc):
        yield f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        # uvicorn stops gracefully, then exits with the signal's status (-15) or 0, by version.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert "Application shutdown complete" in log.read_text()  # the lifespan's shutdown ran


def test_a_real_uvicorn_process_serves_the_same_embeddings(server, store):
    imgs, want = store.images, store.want
    with httpx.Client(base_url=server, timeout=WAIT_S) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/v1/models").json()["data"][0]["version"] == "1"
        # `python -m service` runs a forward pass on one thread per 4 cores (torch's default is one a core)
        assert c.get("/info").json()["torch_threads"] == max(1, (os.cpu_count() or 1) // 4)
        for kwargs in ({"json": {"images": [b64(png(im)) for im in imgs]}},
                       {"json": {"images": [raw(im) for im in imgs], "layer": "projection"}},
                       {"files": [("files", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(imgs)]}):
            r = c.post("/v1/embeddings", **kwargs)
            assert r.status_code == 200, r.text
            layer = want.z if kwargs.get("json", {}).get("layer") == "projection" else want.h
            np.testing.assert_allclose(embeddings(r), layer.numpy(), atol=1e-5)
            assert float(r.headers["x-inference-time"]) >= 0 and r.headers["x-model-version"] == "1"

        r = c.post("/v1/embeddings", json={"images": [GOOD, b64(b"garbage")]})
        assert r.status_code == 422 and r.json()["error"]["index"] == 1
        r = c.post("/v1/embeddings", json={"images": [GOOD] * 9})
        assert r.status_code == 413 and "too many images" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "malformed JSON" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", content=b"x", headers={"content-type": "text/csv"})
        assert r.status_code == 415
        assert_serves(c, store)

        # Threads against the real server: all answered, with the right rows.
        def one(i: int) -> np.ndarray:
            resp = c.post("/v1/embeddings", json={"images": [b64(png(imgs[i % len(imgs)]))]})
            assert resp.status_code == 200, resp.text
            return embeddings(resp)[0]
        threads_out: dict[int, np.ndarray] = {}
        workers = [threading.Thread(target=lambda i=i: threads_out.__setitem__(i, one(i))) for i in range(8)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(WAIT_S)
        assert sorted(threads_out) == list(range(8))
        for i, row in threads_out.items():
            np.testing.assert_allclose(row, want.h[i % len(imgs)].numpy(), atol=1e-5)

        text = c.get("/metrics").text
        post = {"route": "/v1/embeddings", "method": "POST"}
        assert metric(text, "embedding_requests_total", **post, status="200") == 3 + 1 + 8
        assert metric(text, "embedding_requests_total", **post, status="422") == 2
        assert metric(text, "embedding_requests_total", **post, status="413") == 1
        assert metric(text, "embedding_requests_total", **post, status="415") == 1
        assert metric(text, "embedding_images_total", layer="backbone") == 2 * len(imgs) + 1 + 8

