"""Device choice: the GPU when there is one, the CPU otherwise, and the precision that goes with it."""

from __future__ import annotations

import torch

from pipeline.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r} requested but CUDA is not available")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 (no autocast) on the CPU, where bf16 convs are slow."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None
