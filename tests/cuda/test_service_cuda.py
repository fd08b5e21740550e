"""The embedding service on CUDA answers the embeddings the CPU computes."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from tests.cuda.common import CUDA, DEVICE
from tests.test_service import b64, embeddings, make_settings, png, store, wait_ready  # noqa: F401 - a fixture

pytestmark = CUDA


def test_the_service_on_cuda_answers_the_cpu_embeddings(store):  # noqa: F811 - the imported fixture
    with TestClient(create_app(make_settings(store, device=DEVICE.type))) as client:
        wait_ready(client.get)
        info = client.get("/info").json()
        r = client.post("/v1/embeddings", json={"images": [b64(png(im)) for im in store.images]})
    assert r.status_code == 200, r.text
    assert info["device"].split(":")[0] == DEVICE.type
    got, want = embeddings(r), store.want.h.numpy()  # want: extract_features on the CPU
    # cuDNN's convolutions take fp32 inputs as TF32 by default (10 mantissa bits): 2e-3 relative.
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))
