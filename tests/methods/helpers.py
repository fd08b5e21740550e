"""Shared by the method tests: a tiny encoder and method, and a tiny pretraining config."""

from __future__ import annotations

import torch

from pipeline.config import PretrainConfig, SSLConfig
from pipeline.data.preprocess import InputSpec
from pipeline.methods import build_method
from pipeline.methods.base import Method
from pipeline.models.encoder import Encoder, EncoderSpec

torch.set_num_threads(1)


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(EncoderSpec("small", InputSpec(8, 1, (0.5,), (0.25,)), width=4, head_hidden=[8], head_out=4))


def tiny_method(method: str, seed: int = 0, **params: object) -> tuple[Encoder, Method]:
    """A method on :func:`tiny_encoder`; ``params`` go to its own section, ``pretrain.ssl.<method>``."""
    encoder = tiny_encoder(seed)
    return encoder, build_method(SSLConfig.model_validate({"method": method, method: params}), encoder)


def tiny_cfg(method: str, **over: object) -> PretrainConfig:
    base: dict = dict(backbone={"name": "small", "width": 8}, head={"hidden_dims": [32], "out_dim": 16},
                      epochs=2, batch_size=64, optim={"lr": 0.1, "warmup_epochs": 0},
                      sparsehead={"form": "l1", "lambda": 0.0}, num_threads=1)
    base.update(over)
    base["ssl"] = {"method": method, **base.get("ssl", {})}
    return PretrainConfig.model_validate(base)
