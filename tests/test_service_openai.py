"""OpenAI-shaped requests: ``{"input": [...], "model": ...}``, sent by the ``openai`` Python client's
``embeddings.create`` against a real uvicorn server, answer the evaluation's features; an unknown model is
a 404 in the service's error shape."""

# The store fixture is imported from test_service and taken as a parameter by name, which ruff reads as a
# redefinition.
# ruff: noqa: F811

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.server import uvicorn_options
from tests.servers import free_port
from tests.test_service import (  # noqa: F401 - store is a fixture
    NAME,
    WAIT_S,
    Store,
    b64,
    embeddings,
    make_settings,
    png,
    raw,
    store,
    wait_ready,
)


@pytest.fixture(scope="module")
def url(store: Store) -> Iterator[str]:
    """The service under uvicorn in a thread of this process, on a free loopback port."""
    port = free_port()
    settings = make_settings(store)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None,
                                           **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert time.monotonic() < deadline and thread.is_alive(), "the service never became ready"
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


def test_the_openai_client_embeds_images(url, store):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    images = [b64(png(im)) for im in store.images]
    images[1] = "data:image/png;base64," + images[1]
    resp = client.embeddings.create(model=NAME, input=images)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    np.testing.assert_allclose(got, store.want.h.numpy(), atol=1e-5)
    assert [d.index for d in resp.data] == list(range(len(images))) and resp.model == NAME

    one = client.embeddings.create(model=f"{NAME}@champion", input=images[2], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, store.want.h[2].numpy(), atol=1e-5)

    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-small", input=images[:1])
    assert err.value.status_code == 404
    body = err.value.response.json()["error"]
    assert body["type"] == "model_not_found" and "text-embedding-3-small" in body["message"] and body["code"] == 404


def test_openai_shaped_bodies_and_their_mistakes(store):
    imgs, want = store.images, store.want
    with TestClient(create_app(make_settings(store))) as c:
        wait_ready(c.get)
        # The exact body the openai client sends, float answers asked for
        r = c.post("/v1/embeddings", json={"input": [b64(png(im)) for im in imgs], "model": NAME,
                                           "encoding_format": "float", "user": "someone"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(embeddings(r), want.h.numpy(), atol=1e-5)
        body = r.json()
        assert body["model"] == NAME and body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
        # no model named: the served one; the projection; a raw array in input
        r = c.post("/v1/embeddings", json={"input": [raw(imgs[0])], "layer": "projection"})
        np.testing.assert_allclose(embeddings(r), want.z[:1].numpy(), atol=1e-5)
        # today's shape still answers with the model's name, version and alias
        r = c.post("/v1/embeddings", json={"images": [b64(png(imgs[0]))], "model": "models:/sparsehead-encoder@champion"})
        assert r.json()["model"] == {"name": NAME, "version": "1", "alias": "champion"}
        for payload, status, words in (
                ({"input": [b64(png(imgs[0]))], "model": "gpt-4"}, 404, ["gpt-4", NAME, "version 1"]),
                ({"input": [1, 2, 3], "model": NAME}, 422, ["image 0"]),
                ({"input": [], "model": NAME}, 422, ["at least 1"]),
                ({"input": "not base64 %%%"}, 422, ["image 0", "base64"]),
                ({"input": [b64(png(imgs[0]))], "images": [b64(png(imgs[0]))]}, 422, ["exactly one"]),
                ({"model": NAME}, 422, ["exactly one"]),
                ({"input": [b64(png(imgs[0]))], "dimensions": 8}, 422, ["dimensions", "Extra inputs"])):
            r = c.post("/v1/embeddings", json=payload)
            assert r.status_code == status, (payload, r.text)
            err = r.json()["error"]
            assert err["code"] == status and all(w in err["message"] for w in words), err
        assert c.get("/v1/models").json()["data"][0]["id"] == NAME  # what OpenAI clients list
