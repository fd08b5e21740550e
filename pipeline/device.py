"""Device choice: the GPU when there is one, the CPU otherwise, and the settings that go with it."""

from __future__ import annotations

import torch

from pipeline.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """The device ``pretrain.device`` (or the service's ``SERVE_DEVICE``) names.

    Args:
        spec: "auto" (CUDA when there is a GPU), "cpu", "cuda" or "cuda:N".

    Returns:
        The device.

    Raises:
        ValueError: CUDA asked for where there is none.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r} requested but CUDA is not available")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``pretrain.precision``.

    Args:
        device: The training device.
        precision: "auto", "fp32" or "bf16".

    Returns:
        bf16 on CUDA by default; None (fp32, no autocast) on the CPU, where bf16 convolutions are slow.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None


def use_channels_last(device: torch.device, setting: bool | None = None) -> bool:
    """Whether to lay images and weights out channels-last (NHWC) for ``pretrain.channels_last``.

    Args:
        device: The training device.
        setting: The param; None: on CUDA (its tensor cores take NHWC convolutions), off on the CPU.

    Returns:
        True for channels-last.
    """
    return setting if setting is not None else device.type == "cuda"
