"""The one pre-processing path from pixels to model input, shared by training, evaluation and serving.

An image of any size and channel count becomes uint8 (H, W, C) at the model's size and channel count
(:func:`fit_image`); a uint8 batch becomes float NCHW in [0, 1] (:func:`to_model_input`). Per-channel
normalisation lives inside the encoder, so the registered model takes [0, 1] images and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, the weights PIL uses for RGB -> L, so decoded files and raw arrays agree.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class InputSpec:
    """What the encoder takes: a square side, a channel count, and the normalisation of its data."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(int(d["image_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images on the [0, 1] scale.

    One streaming pass of ``chunk`` images at a time into per-channel histograms of the 256 levels (exact
    integer counts), then the moments in float64: memory stays at one chunk whatever the set's size, and
    ``images`` may be memory-mapped shards.
    """
    c = images.shape[-1]
    counts = np.zeros((c, 256), dtype=np.int64)
    for lo in range(0, len(images), chunk):
        x = np.asarray(images[lo:lo + chunk]).reshape(-1, c)
        for k in range(c):
            counts[k] += np.bincount(x[:, k], minlength=256)
    levels = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(axis=1).astype(np.float64)
    mean = counts @ levels / n
    var = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    std = np.maximum(np.sqrt(var), 1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, C) with C in {1, 3, 4} -> uint8 (H, W, channels); alpha is dropped, grey is repeated."""
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
    """Any uint8 image -> uint8 (S, S, C) at the spec's side and channel count (antialiased resize)."""
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
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] on ``device``.

    With a spec, a batch not at the spec's side is resized the same way :func:`fit_image` does it.
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
