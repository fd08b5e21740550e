"""Feature extraction: one pass of the frozen encoder over a split, giving backbone h and projection z."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data.preprocess import to_model_input
from pipeline.models import Encoder


@dataclass
class Features:
    h: torch.Tensor  # (N, feature_dim) float32, backbone output
    z: torch.Tensor  # (N, projection_dim) float32, projection-head output

    def __len__(self) -> int:
        return int(self.h.shape[0])

    def level(self, name: str) -> torch.Tensor:
        if name == "backbone":
            return self.h
        if name == "projection":
            return self.z
        raise ValueError(f"feature level must be 'backbone' or 'projection', got {name!r}")


def extract_features(encoder: Encoder, images: np.ndarray, batch_size: int = 512,
                     device: torch.device | str = "cpu", progress: bool = False,
                     desc: str = "features") -> Features:
    """h and z for uint8 (N, H, W, C) images, on ``device``; the encoder is moved there.

    Runs in eval mode (batch norm uses its running statistics, so a sample's features do not depend on
    the batch it shares) and restores the encoder's previous mode afterwards, so a training loop can call
    this between epochs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.ndim != 4 or images.shape[-1] != encoder.spec.input.channels:
        raise ValueError(f"images must be (N, H, W, {encoder.spec.input.channels}) for this encoder, "
                         f"got shape {tuple(images.shape)}")
    device = torch.device(device)
    was_training = encoder.training
    encoder.to(device).eval()
    hs: list[torch.Tensor] = []
    zs: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                              disable=not progress, leave=False):
                x = to_model_input(images[start:start + batch_size], encoder.spec.input, device)
                h, z = encoder.forward_both(x)
                hs.append(h.float())
                zs.append(z.float())
    finally:
        encoder.train(was_training)
    if not hs:
        return Features(torch.empty(0, encoder.feature_dim, device=device),
                        torch.empty(0, encoder.projection_dim, device=device))
    return Features(torch.cat(hs), torch.cat(zs))
