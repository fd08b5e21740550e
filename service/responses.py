"""The /v1/embeddings response: OpenAI's list-of-embeddings shape, serialised straight from numpy."""

from __future__ import annotations

import base64
import json

import numpy as np

from service.model_store import ServedModel

try:  # orjson writes float32 arrays directly, several times faster than lists of Python floats
    import orjson
except ImportError:  # pragma: no cover - json is the fallback
    orjson = None


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def embeddings_body(rows: np.ndarray, model: ServedModel, layer: str, encoding_format: str) -> bytes:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if encoding_format == "base64":
        items: list = [base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") for r in rows]
    else:
        items = list(rows)
    lm = model.loaded
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
        "model": {"name": lm.name, "version": lm.version, "alias": lm.alias},
        "layer": layer,
        "dimension": int(rows.shape[1]),
        "count": int(rows.shape[0]),
    }
    if orjson is not None:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(payload, default=lambda o: o.tolist(), separators=(",", ":")).encode()
