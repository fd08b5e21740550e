"""The encoder: backbone + projection head + the input spec they were trained for.

``Encoder.forward`` takes float images in [0, 1], (N, C, S, S), and returns backbone features h;
``project`` returns the head output z. Normalisation happens inside, so the saved encoder is
self-describing: :func:`pipeline.data.preprocess.to_model_input` is all a caller needs before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from pipeline.data.preprocess import InputSpec
from pipeline.errors import UserError, described
from pipeline.io import atomic_path
from pipeline.models.backbones import build_backbone
from pipeline.models.heads import ProjectionHead
from pipeline.torch_files import UnreadableTorchFile, load_torch_file

Layer = Literal["backbone", "projection"]
ENCODER_FILE = "encoder.pt"  # the file name of a saved encoder in a model folder


@dataclass
class EncoderSpec:
    backbone: str
    input: InputSpec
    width: int = 32
    head_hidden: list[int] = field(default_factory=lambda: [256])
    head_out: int = 64
    head_bn: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input"] = self.input.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderSpec:
        d = dict(d)
        d["input"] = InputSpec.from_dict(d["input"])
        return cls(**d)


class Encoder(nn.Module):
    """Backbone + projection head + the input they were trained for: what the registry stores.

    ``forward(x)`` takes float images in [0, 1], (N, C, S, S) with C and S those of ``spec.input``,
    normalises them with the training set's channel statistics and returns the backbone features h,
    (N, feature_dim); :meth:`project` returns the head's output z, (N, projection_dim);
    :meth:`forward_both` returns (h, z) from one pass.

    Args:
        spec: the architecture and the input spec; the weights are drawn from the global RNG.
    """

    mean: torch.Tensor  # (1, C, 1, 1) buffers: the training set's channel statistics
    std: torch.Tensor

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone, self.feature_dim = build_backbone(spec.backbone, spec.input.channels, spec.width)
        self.head = ProjectionHead(self.feature_dim, list(spec.head_hidden), spec.head_out, spec.head_bn)
        c = spec.input.channels
        self.register_buffer("mean", torch.tensor(spec.input.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(spec.input.std, dtype=torch.float32).view(1, c, 1, 1))

    @property
    def projection_dim(self) -> int:
        return self.head.out_dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.forward(x)
        return h, self.head(h)

    def embed(self, x: torch.Tensor, layer: Layer = "backbone") -> torch.Tensor:
        if layer == "backbone":
            return self.forward(x)
        if layer == "projection":
            return self.project(x)
        raise ValueError(f"layer must be 'backbone' or 'projection', got {layer!r}")


def save_encoder(encoder: Encoder, path: str | Path, extra: dict | None = None) -> Path:
    """Save spec + CPU weights atomically (CPU so that a GPU-trained encoder loads anywhere)."""
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    payload = {"spec": encoder.spec.to_dict(), "state_dict": state, "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


# What a payload of another shape raises when it is turned back into an encoder.
_NOT_AN_ENCODER = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Load an encoder saved by :func:`save_encoder`, in eval mode; returns it and its ``extra`` dict.

    A file that is not such an encoder raises ValueError naming it and the way out (the stage that
    wrote it rewrites it), never torch's unpickling traceback.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: encoder not found (run the pretrain stage first)")
    way_out = "rerun the stage that trained it to rewrite it (dvc repro -f pretrain; final for the final model)"
    try:
        payload = load_torch_file(path, map_location=map_location, weights_only=True)
    except UnreadableTorchFile as exc:
        raise UserError(f"{path}: not a readable encoder file, truncated or corrupt ({exc}); "
                        f"{way_out}") from exc
    if not isinstance(payload, dict) or not {"spec", "state_dict"} <= payload.keys():
        raise UserError(f"{path}: not an encoder saved by this pipeline (no spec and state_dict); {way_out}")
    try:
        encoder = Encoder(EncoderSpec.from_dict(payload["spec"]))
        encoder.load_state_dict(payload["state_dict"])
    except _NOT_AN_ENCODER as exc:
        raise UserError(f"{path}: its spec and weights do not make an encoder ({described(exc)}); "
                        f"{way_out}") from exc
    encoder.eval()
    extra = payload.get("extra", {})
    return encoder, extra if isinstance(extra, dict) else {}
