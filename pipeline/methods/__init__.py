"""SSL methods behind one interface (:class:`pipeline.methods.base.Method`), chosen by ``pretrain.ssl.method``.

Adding a method is one module here (its loss, its modules, its state) and one entry in ``METHODS``.
"""

from __future__ import annotations

from pipeline.config import SSLConfig
from pipeline.methods.base import Method, StepOutput
from pipeline.methods.simclr import NTXentLoss, SimCLR
from pipeline.models.encoder import Encoder

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR,)}

__all__ = ["METHODS", "Method", "NTXentLoss", "SimCLR", "StepOutput", "build_method"]


def build_method(cfg: SSLConfig, encoder: Encoder) -> Method:
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise ValueError(f"pretrain.ssl.method: unknown method {cfg.method!r}; choose one of "
                         f"{', '.join(METHODS)}") from None
    return cls(cfg, encoder)
