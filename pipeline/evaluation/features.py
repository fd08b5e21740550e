"""Feature extraction: one pass of the frozen encoder over a split, giving backbone h and projection z."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.data.preprocess import to_model_input
from pipeline.data.shards import ImageArray
from pipeline.models import Encoder


@dataclass
class Features:
    """The features of one split.

    Attributes:
        h: (N, feature_dim) float32, the backbone's output.
        z: (N, projection_dim) float32, the projection head's output.
    """

    h: torch.Tensor
    z: torch.Tensor

    def __len__(self) -> int:
        return int(self.h.shape[0])

    def level(self, name: str) -> torch.Tensor:
        """``h`` for ``"backbone"``, ``z`` for ``"projection"``; ValueError otherwise."""
        if name == "backbone":
            return self.h
        if name == "projection":
            return self.z
        raise ValueError(f"feature level must be 'backbone' or 'projection', got {name!r}")


def extract_features(encoder: Encoder, images: ImageArray, batch_size: int = 512,
                     device: torch.device | str = "cpu", progress: bool = False,
                     desc: str = "features") -> Features:
    """h and z of images, in eval mode, restoring the encoder's mode afterwards.

    Batch norm uses its running statistics, so an image's features do not depend on the batch it shares,
    and a training loop can call this between epochs.

    Args:
        encoder: the encoder; it is moved to ``device``.
        images: uint8 (N, H, W, C) images (an array or memory-mapped shards).
        batch_size: images per forward pass.
        device: where to run.
        progress: show a progress bar.
        desc: the progress bar's label.

    Returns:
        The features, on ``device``.

    Raises:
        ValueError: a batch size below 1, or images of other channels than the encoder's.
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
