"""The one pre-processing path from pixels to model input, shared by training, evaluation and serving.

An image of any size and channel count becomes uint8 (H, W, C) at the model's size and channel count
(:func:`fit_image`); a uint8 batch becomes float NCHW in [0, 1] (:func:`to_model_input`). Per-channel
normalisation lives inside the encoder, so the registered model takes [0, 1] images and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.shards import ImageArray, ShardedImages, level_counts

# ITU-R 601-2 luma, the weights PIL uses for RGB -> L, so decoded files and raw arrays agree.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class InputSpec:
    """What the encoder takes: a square side, a channel count, and the normalisation of its data.

    Attributes:
        image_size: The square side, pixels.
        channels: 1 (grey) or 3 (RGB).
        mean: Per-channel mean of the training images on the [0, 1] scale.
        std: Per-channel standard deviation, same scale.
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (what the encoder file stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """The spec :meth:`to_dict` wrote."""
        return cls(int(d["image_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


def channel_stats(images: ImageArray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images on the [0, 1] scale.

    From the per-channel histograms of the 256 levels (exact integer counts), then the moments in
    float64. A whole sharded split carries its histogram from prepare, so nothing is read; otherwise one
    streaming pass of ``chunk`` images at a time: memory stays at one chunk whatever the set's size.

    Args:
        images: uint8 (N, H, W, C), in memory or memory-mapped shards.
        chunk: Images read per step of the pass.

    Returns:
        (mean, std), one float per channel each; std is at least 1e-3 (a constant channel).
    """
    counts = images.level_counts if isinstance(images, ShardedImages) else None
    if counts is None:
        counts = np.zeros((images.shape[-1], 256), dtype=np.int64)
        for lo in range(0, len(images), chunk):
            counts += level_counts(np.asarray(images[lo:lo + chunk]))
    levels = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(axis=1).astype(np.float64)
    mean = counts @ levels / n
    var = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    std = np.maximum(np.sqrt(var), 1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An image at another channel count: alpha is dropped, grey is repeated, colour becomes luma.

    Args:
        image: uint8 (H, W) or (H, W, C) with C in 1..4 (2: grey + alpha, 4: RGBA).
        channels: 1 or 3.

    Returns:
        uint8 (H, W, channels); ``image`` itself when it has them already.

    Raises:
        ValueError: Another shape or channel count.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}")
    c = image.shape[2]
    if c == 2:  # grey + alpha
        image, c = image[:, :, :1], 1
    if c == 4:
        image, c = image[:, :, :3], 3
    if c == channels:
        return image
    if channels == 1:
        grey = np.rint(image.astype(np.float64) @ _LUMA).clip(0, 255).astype(np.uint8)
        return grey[:, :, None]
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def fit_image(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Any uint8 image at the spec's side and channel count (antialiased bilinear resize).

    Args:
        image: uint8 (H, W) or (H, W, C).
        spec: The side and channel count wanted.

    Returns:
        uint8 (S, S, C).

    Raises:
        ValueError: Not uint8, an empty side, or channels :func:`convert_channels` refuses.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    image = convert_channels(image, spec.channels)
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"image has an empty side: shape {image.shape}")
    if (h, w) == (spec.image_size, spec.image_size):
        return image
    # np.array copies: a decoded PIL image is read-only, and torch warns on non-writable buffers.
    t = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(spec.image_size, spec.image_size), mode="bilinear", antialias=True,
                      align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def to_model_input(images: np.ndarray | torch.Tensor, spec: InputSpec | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """A uint8 batch as model input: float32 (N, C, H, W) in [0, 1].

    Args:
        images: uint8 (N, H, W, C), numpy or torch.
        spec: When given, a batch not at its side is resized the way :func:`fit_image` does it.
        device: Where the result goes (the uint8 batch is moved first: a quarter of the bytes).

    Returns:
        float32 (N, C, H, W), contiguous.

    Raises:
        ValueError: Not uint8 (N, H, W, C).
    """
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if t.dtype != torch.uint8 or t.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {t.dtype} {tuple(t.shape)}")
    if device is not None:
        t = t.to(device, non_blocking=True)
    x = t.permute(0, 3, 1, 2).float()
    if spec is not None and tuple(x.shape[-2:]) != (spec.image_size, spec.image_size):
        x = F.interpolate(x, size=(spec.image_size, spec.image_size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255)
    return (x / 255.0).contiguous()
